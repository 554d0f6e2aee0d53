// Package secrets seals vCenter passwords before they enter the raft log, so the log and
// snapshots on disk never hold them in clear. The key is shared by the controllers (a file
// each reads at start); agents receive the opened password in their lease only.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// prefix marks a sealed value; v1 is AES-256-GCM with a random 12-byte nonce.
const prefix = "sealed:v1:"

// ErrNoKey: a sealed value arrived but this controller has no key to open it.
var ErrNoKey = errors.New("password is sealed but no secrets key is configured (secrets.key_file)")

// Box seals and opens values. A nil *Box is valid: it seals nothing and opens only clear
// values, so a cluster without a key works as before.
type Box struct {
	aead cipher.AEAD
}

// LoadKeyFile reads a 32-byte key written as 64 hex digits or base64 (whitespace ignored).
// The file must not be readable by others.
func LoadKeyFile(path string) (*Box, error) {
	if path == "" {
		return nil, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets key %s is readable by group or others (mode %o): chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	return NewBox(strings.TrimSpace(string(b)))
}

// NewBox builds a box from a hex or base64 encoded 32-byte key.
func NewBox(encoded string) (*Box, error) {
	key, err := hex.DecodeString(encoded)
	if err != nil || len(key) != 32 {
		key, err = base64.StdEncoding.DecodeString(encoded)
	}
	if err != nil || len(key) != 32 {
		return nil, errors.New("secrets key must be 32 bytes, as 64 hex digits or base64")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Box{aead: aead}, nil
}

// Sealed reports whether v is a sealed value.
func Sealed(v string) bool { return strings.HasPrefix(v, prefix) }

// Seal returns v sealed (v unchanged without a key, or when already sealed or empty).
func (b *Box) Seal(v string) (string, error) {
	if b == nil || v == "" || Sealed(v) {
		return v, nil
	}
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := b.aead.Seal(nonce, nonce, []byte(v), []byte(prefix))
	return prefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// Open returns the clear value of a sealed one (clear values are returned as they are).
func (b *Box) Open(v string) (string, error) {
	if !Sealed(v) {
		return v, nil
	}
	if b == nil {
		return "", ErrNoKey
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(v, prefix))
	n := b.aead.NonceSize()
	if err != nil || len(raw) < n {
		return "", errors.New("sealed password is corrupt")
	}
	out, err := b.aead.Open(nil, raw[:n], raw[n:], []byte(prefix))
	if err != nil {
		return "", errors.New("sealed password does not open with this key (different secrets.key_file on this controller?)")
	}
	return string(out), nil
}
