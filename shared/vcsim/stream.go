package vcsim

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// streamCache converts flat extents to stream-optimized VMDKs with qemu-img, once per disk
// content: a conversion is reused until the flat file changes (size, times or inode).
type streamCache struct {
	dir     string
	qemuImg string
	log     *slog.Logger

	mu      sync.Mutex
	entries map[string]*streamEntry // flat path → entry
}

type streamEntry struct {
	// mu serialises conversions of one disk: two exports of the same VM share one run.
	mu    sync.Mutex
	valid bool
	stamp fileStamp // of the flat file when the conversion started
	path  string
	size  int64
	sha1  string // of the converted file, computed on first manifest request
}

type fileStamp struct {
	size         int64
	mtime, ctime time.Time
	ino          uint64
}

func stampOf(name string) (fileStamp, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
		st.ctime = time.Unix(sys.Ctim.Sec, sys.Ctim.Nsec)
	}
	return st, nil
}

func newStreamCache(dir, qemuImg string, log *slog.Logger) *streamCache {
	return &streamCache{dir: dir, qemuImg: qemuImg, log: log, entries: map[string]*streamEntry{}}
}

func (c *streamCache) entry(flat string) *streamEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[flat]
	if !ok {
		e = &streamEntry{}
		c.entries[flat] = e
	}
	return e
}

// get returns the stream-optimized VMDK of the flat extent and its size, converting it
// when there is no conversion yet or the flat file changed since.
func (c *streamCache) get(ctx context.Context, flat string) (string, int64, error) {
	e := c.entry(flat)
	e.mu.Lock()
	defer e.mu.Unlock()

	// The stamp is taken before converting: if the file changes during the conversion, the
	// next get sees a different stamp and converts again.
	st, err := stampOf(flat)
	if err != nil {
		return "", 0, err
	}
	if e.valid && e.stamp == st {
		return e.path, e.size, nil
	}
	e.valid = false
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return "", 0, err
	}
	sum := sha256.Sum256([]byte(flat))
	out := filepath.Join(c.dir, hex.EncodeToString(sum[:8])+"-"+strings.TrimSuffix(filepath.Base(flat), "-flat.vmdk")+".vmdk")
	tmp := out + ".tmp"
	start := time.Now()
	cmd := exec.CommandContext(ctx, c.qemuImg, "convert", "-q", "-f", "raw", "-O", "vmdk",
		"-o", "subformat=streamOptimized", flat, tmp)
	if msg, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		if errors.Is(err, exec.ErrNotFound) {
			return "", 0, fmt.Errorf("%s not found: install qemu-utils (scripts/host-setup.sh)", c.qemuImg)
		}
		return "", 0, fmt.Errorf("qemu-img convert to streamOptimized: %w: %s", err, strings.TrimSpace(string(msg)))
	}
	// Rename over the previous conversion: a download still reading it keeps its inode.
	if err := os.Rename(tmp, out); err != nil {
		return "", 0, err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return "", 0, err
	}
	e.valid, e.stamp, e.path, e.size, e.sha1 = true, st, out, fi.Size(), ""
	c.log.Info("export: converted disk to stream-optimized VMDK", "flat", flat,
		"bytes", fi.Size(), "took", time.Since(start).Round(time.Millisecond))
	return out, fi.Size(), nil
}

// sha1 returns the hex SHA-1 of the current conversion of flat.
func (c *streamCache) sha1(flat string) (string, error) {
	e := c.entry(flat)
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.valid {
		return "", fmt.Errorf("no conversion of %s", filepath.Base(flat))
	}
	if e.sha1 == "" {
		f, err := os.Open(e.path)
		if err != nil {
			return "", err
		}
		defer f.Close()
		h := sha1.New()
		if _, err := io.Copy(h, f); err != nil {
			return "", err
		}
		e.sha1 = hex.EncodeToString(h.Sum(nil))
	}
	return e.sha1, nil
}
