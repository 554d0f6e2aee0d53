package worker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// The agent's own credential (issue 18): a random secret it makes up and keeps in
// File; it enrols the secret's SHA-256 under its name with the join token, and presents
// the secret on every other call. The secret is written before it is enrolled, and a new
// one is written (File.next) before it replaces the old, so a crash or a lost answer at
// any point leaves a credential on disk that the cluster knows or can still enrol.

const (
	enrollPath = "/agent/v1/enroll"
	rotatePath = "/agent/v1/rotate"
)

type identity struct {
	name string
	// file keeps the credential across restarts ("" : memory only, tests).
	file string
	log  *slog.Logger

	mu       sync.Mutex
	cred     string
	enrolled bool
	rotating bool
}

func newCredential() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux ≥ 3.17
	}
	return hex.EncodeToString(b)
}

func hashOf(cred string) string {
	sum := sha256.Sum256([]byte(cred))
	return hex.EncodeToString(sum[:])
}

// writeSecret writes a credential file atomically, readable by this user only.
func writeSecret(path, v string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(v + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if len(v) < 32 {
		return "", fmt.Errorf("%s: not a credential", path)
	}
	return v, nil
}

// credential returns the credential to present, enrolling it first when this process
// has not (a no-op on the controller when it is known already).
func (c *client) credential(ctx context.Context, timeout time.Duration) (string, error) {
	id := &c.id
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.enrolled {
		return id.cred, nil
	}
	if id.cred == "" {
		if err := id.load(); err != nil {
			return "", err
		}
	}
	err := c.enroll(ctx, id.cred, timeout)
	if errors.Is(err, ErrNameTaken) && id.file != "" {
		// A rotation whose answer was lost: the cluster may know the next credential.
		if next, rerr := readSecret(id.file + ".next"); rerr == nil && next != id.cred {
			if err = c.enroll(ctx, next, timeout); err == nil {
				if werr := writeSecret(id.file, next); werr != nil {
					return "", fmt.Errorf("agent credential: %w", werr)
				}
				os.Remove(id.file + ".next")
				id.cred = next
			}
		}
	}
	if err != nil {
		return "", err
	}
	id.enrolled = true
	return id.cred, nil
}

// load reads the credential file, or makes and writes a new credential.
func (id *identity) load() error {
	if id.file == "" {
		id.cred = newCredential()
		return nil
	}
	v, err := readSecret(id.file)
	if err == nil {
		id.cred = v
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("agent credential: %w", err)
	}
	v = newCredential()
	if err := writeSecret(id.file, v); err != nil {
		return fmt.Errorf("agent credential: %w", err)
	}
	id.log.Info("made a new agent credential", "file", id.file)
	id.cred = v
	return nil
}

func (c *client) enroll(ctx context.Context, cred string, timeout time.Duration) error {
	var resp proto.EnrollResponse
	_, err := c.send(ctx, enrollPath, proto.EnrollRequest{Agent: c.id.name, CredentialSHA256: hashOf(cred)}, &resp, timeout, proto.AgentTokenHeader, c.token)
	if err != nil {
		return fmt.Errorf("enrol as %s: %w", c.id.name, err)
	}
	return nil
}

// unenrolled makes the next call enrol again, unless the credential changed meanwhile.
func (c *client) unenrolled(cred string) {
	c.id.mu.Lock()
	defer c.id.mu.Unlock()
	if c.id.cred == cred {
		c.id.enrolled = false
	}
}

// rotateCredential replaces the credential with a new one (an admin asked: hyperctl agents
// rotate). Calls go on with the old one until the new one is enrolled.
func (c *client) rotateCredential(ctx context.Context) {
	id := &c.id
	id.mu.Lock()
	if id.rotating || !id.enrolled {
		id.mu.Unlock()
		return
	}
	id.rotating = true
	old := id.cred
	id.mu.Unlock()
	defer func() {
		id.mu.Lock()
		id.rotating = false
		id.mu.Unlock()
	}()
	next := newCredential()
	if id.file != "" {
		if err := writeSecret(id.file+".next", next); err != nil {
			id.log.Warn("credential rotation: cannot write the new credential", "err", err)
			return
		}
	}
	_, err := c.send(ctx, rotatePath, proto.EnrollRequest{Agent: id.name, CredentialSHA256: hashOf(next)}, nil, 30*time.Second, proto.AgentCredentialHeader, old)
	if err != nil {
		id.log.Warn("credential rotation failed; the controller asks again on the next call", "err", err)
		return
	}
	if id.file != "" {
		if err := writeSecret(id.file, next); err != nil {
			// The .next file stays: credential() finds it when the old one is refused.
			id.log.Error("credential rotation: new credential enrolled but not saved", "err", err)
		}
		os.Remove(id.file + ".next")
	}
	id.mu.Lock()
	if id.cred == old {
		id.cred = next
	}
	id.mu.Unlock()
	id.log.Info("agent credential rotated")
}
