package vcsim

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
)

// fillBlock aligns the end of the written part to the file system block size, so the
// hole that follows is a real hole and not a partly written block.
const fillBlock = 4096

// fillDisks sizes every flat extent to its capacity and writes the configured content into
// its first part. Disks are written in parallel: each has its own deterministic stream.
func (s *Sim) fillDisks(ctx context.Context) error {
	type job struct {
		vm, disk int
		d        DiskFile
	}
	jobs := make(chan job)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	workers := min(runtime.GOMAXPROCS(0), 4)
	for range workers {
		wg.Go(func() {
			for j := range jobs {
				var err error
				if j.disk == 0 && s.guestSize > 0 {
					err = copyGuest(ctx, j.d.FlatPath, s.cfg.GuestImage, j.d.Capacity)
				} else {
					err = fillExtent(ctx, j.d.FlatPath, j.d.Capacity, s.cfg.Fill, diskSeed(s.cfg.Seed, j.vm, j.disk))
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("vcsim: fill %s: %w", j.d.FlatPath, err))
					mu.Unlock()
				}
			}
		})
	}
	for i, v := range s.VMs {
		for k, d := range v.Disks {
			jobs <- job{vm: i, disk: k, d: d}
		}
	}
	close(jobs)
	wg.Wait()
	return errors.Join(errs...)
}

// diskSeed derives one ChaCha8 key per disk from the user's seed, so content does not
// depend on the order the workers run in.
func diskSeed(seed int64, vm, disk int) [32]byte {
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], uint64(seed))
	binary.LittleEndian.PutUint64(b[8:], uint64(vm))
	binary.LittleEndian.PutUint64(b[16:], uint64(disk))
	return sha256.Sum256(b[:])
}

// FillLength is how many leading bytes of an extent of the given capacity Start writes
// for fill; the rest is a hole.
func FillLength(capacity int64, fill Fill) int64 {
	if fill.Mode == FillNone || fill.Mode == "" {
		return 0
	}
	n := int64(float64(capacity) * fill.Fraction)
	return min(n-n%fillBlock, capacity)
}

// fillExtent makes the file exactly capacity bytes long (a hole) and writes its first
// FillLength bytes with real writes, so the file system allocates those blocks only.
func fillExtent(ctx context.Context, name string, capacity int64, fill Fill, key [32]byte) error {
	f, err := emptyExtent(name, capacity)
	if err != nil {
		return err
	}
	defer f.Close()
	n := FillLength(capacity, fill)
	if n == 0 {
		return nil
	}
	var src io.Reader = zeroReader{}
	if fill.Mode == FillRandom {
		src = rand.NewChaCha8(key)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := buf[:min(int64(len(buf)), n-off)]
		if _, err := io.ReadFull(src, chunk); err != nil {
			return err
		}
		w, err := f.WriteAt(chunk, off)
		if err != nil {
			return err
		}
		off += int64(w)
	}
	return f.Close()
}

// emptyExtent opens the extent for writing as one hole of capacity bytes.
func emptyExtent(name string, capacity int64) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(capacity); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// guestDiskSize is the capacity of a disk holding the guest image: the image's size
// rounded up to a MiB (descriptors count whole sectors; the simulator wants MiB), or the
// configured disk size when that is larger.
func guestDiskSize(image string, diskSize int64) (int64, error) {
	st, err := os.Stat(image)
	if err != nil {
		return 0, configErr("guest image: %v (build it with scripts/guest-image.sh)", err)
	}
	if !st.Mode().IsRegular() || st.Size() < 1<<20 {
		return 0, configErr("guest image %s is not a disk image", image)
	}
	size := (st.Size() + 1<<20 - 1) &^ (1<<20 - 1)
	return max(size, diskSize), nil
}

// copyGuest writes the guest image into the flat extent, keeping its holes: only the
// image's non-zero 64 KiB blocks are written, so a 2 GiB image with 700 MiB of data
// allocates about 700 MiB.
func copyGuest(ctx context.Context, flat, image string, capacity int64) error {
	src, err := os.Open(image)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := emptyExtent(flat, capacity)
	if err != nil {
		return err
	}
	defer dst.Close()
	buf := make([]byte, 64<<10)
	for off := int64(0); ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(src, buf)
		if n > 0 && !allZero(buf[:n]) {
			if _, werr := dst.WriteAt(buf[:n], off); werr != nil {
				return werr
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	return dst.Close()
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
