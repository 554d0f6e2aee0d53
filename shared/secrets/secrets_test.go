package secrets

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const hexKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

func TestSealOpen(t *testing.T) {
	b, err := NewBox(hexKey)
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := b.Seal("hunter2")
	s2, _ := b.Seal("hunter2")
	if !Sealed(s1) || strings.Contains(s1, "hunter2") || s1 == s2 {
		t.Fatalf("seal: %q %q (a random nonce must make them differ)", s1, s2)
	}
	if again, _ := b.Seal(s1); again != s1 {
		t.Fatal("sealing twice must be a no-op")
	}
	if got, err := b.Open(s1); err != nil || got != "hunter2" {
		t.Fatalf("open: %q %v", got, err)
	}
	if got, _ := b.Open("clear"); got != "clear" {
		t.Fatal("clear values open to themselves")
	}
	other, _ := NewBox(strings.Repeat("ab", 32))
	if _, err := other.Open(s1); err == nil {
		t.Fatal("a different key must not open it")
	}
	var none *Box
	if v, _ := none.Seal("x"); v != "x" {
		t.Fatal("nil box seals nothing")
	}
	if _, err := none.Open(s1); err != ErrNoKey {
		t.Fatalf("nil box on sealed value: %v", err)
	}
	if _, err := b.Open("sealed:v1:@@@"); err == nil {
		t.Fatal("corrupt value opened")
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	os.WriteFile(p, []byte(hexKey+"\n"), 0o644)
	if _, err := LoadKeyFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key accepted: %v", err)
	}
	os.Chmod(p, 0o600)
	if b, err := LoadKeyFile(p); err != nil || b == nil {
		t.Fatalf("load: %v", err)
	}
	os.WriteFile(p, []byte("short"), 0o600)
	if _, err := LoadKeyFile(p); err == nil {
		t.Fatal("short key accepted")
	}
	if b, err := LoadKeyFile(""); err != nil || b != nil {
		t.Fatal("no file means no box")
	}
}
