package vcsim

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// A simulated disk is a chain of files, as on ESXi: the base disk (a flat extent) and, for
// each snapshot, a delta disk. A snapshot freezes the file the VM was writing and the VM
// goes on writing a new delta whose parent it is ("redirect on write"), so reading the
// snapshot's disk is reading a file nobody writes any more; removing the snapshot merges
// the delta back into its parent. That is what makes a snapshot of a running VM a point in
// time for the fake VDDK, which reads the same files by their descriptors.
//
// The delta extent is not VMware's sparse format: it is a sparse raw file of the disk's
// size whose allocated grains (SEEK_DATA) are the ones the delta holds. Grains are only
// ever written whole (a partial write first copies the grain up from the parent chain),
// so an allocated grain is a present grain. Its descriptor says createType="vmfsSparse"
// and parentFileNameHint like ESXi's, with a comment naming the layout.

// grain is the unit of delta disks and of change tracking: 64 KiB, the chunk of VDDK's
// QueryAllocatedBlocks and a usual CBT block size.
const grain = 64 << 10

// lseek whence values of Linux (the syscall package does not name them).
const (
	seekData = 3
	seekHole = 4
)

// diskFile is one file of a chain.
type diskFile struct {
	dsPath     string // "[LocalDS_0] vm-1/vm-1-000001.vmdk"
	descriptor string // local path of the text descriptor
	extent     string // local path of the data file
	delta      bool
	cid        string
	f          *os.File
	// have marks the grains a delta holds (a base holds every grain).
	have []bool
}

func (f *diskFile) present(g int64) bool { return !f.delta || f.have[g] }

// chainDisk is one virtual disk of a VM: its chain and its change tracking.
type chainDisk struct {
	key      int32
	capacity int64
	chain    []*diskFile // [0] is the base disk; the last is the one the VM writes
	// lastWrite is the change-tracking epoch of the last write of each grain (0: not
	// written since tracking began).
	lastWrite []uint32
	ctkUUID   string // change tracking id of the disk ("52 1f …"); new each time CBT is enabled
	written   int64  // bytes the guest wrote since the simulator started
	writes    int64
	// dirty marks the grains the guest wrote since the simulator started.
	dirty []bool
}

func (d *chainDisk) grains() int64 { return (d.capacity + grain - 1) / grain }

// openBase opens a base disk from its descriptor.
func openBase(dsPath, descriptor string, capacity int64) (*chainDisk, error) {
	cid, extent, _, err := readDescriptor(descriptor)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(extent, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("vcsim: open %s: %w", extent, err)
	}
	d := &chainDisk{capacity: capacity}
	d.chain = []*diskFile{{dsPath: dsPath, descriptor: descriptor, extent: extent, cid: cid, f: f}}
	d.lastWrite = make([]uint32, d.grains())
	d.dirty = make([]bool, d.grains())
	return d, nil
}

func (d *chainDisk) close() {
	for _, f := range d.chain {
		if f.f != nil {
			_ = f.f.Close()
		}
	}
}

var (
	reExtent = regexp.MustCompile(`^RW\s+(\d+)\s+(\S+)\s+"([^"]+)"`)
	reCID    = regexp.MustCompile(`^CID=([0-9a-fA-F]+)`)
)

// readDescriptor returns a descriptor's CID, the local path of its (single) extent and the
// extent's size in sectors.
func readDescriptor(path string) (cid, extent string, sectors int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", 0, fmt.Errorf("vcsim: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := reCID.FindStringSubmatch(line); m != nil {
			cid = m[1]
		}
		if m := reExtent.FindStringSubmatch(line); m != nil {
			if extent != "" {
				return "", "", 0, fmt.Errorf("vcsim: %s has more than one extent", path)
			}
			sectors, _ = strconv.ParseInt(m[1], 10, 64)
			extent = filepath.Join(filepath.Dir(path), m[3])
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", 0, fmt.Errorf("vcsim: %s: %w", path, err)
	}
	if extent == "" {
		return "", "", 0, fmt.Errorf("vcsim: %s has no extent line", path)
	}
	return cid, extent, sectors, nil
}

// addDelta starts a new delta on top of the chain, named like ESXi's: base-000001.vmdk.
func (d *chainDisk) addDelta() (*diskFile, error) {
	base, top := d.chain[0], d.chain[len(d.chain)-1]
	dir := filepath.Dir(base.descriptor)
	stem := strings.TrimSuffix(filepath.Base(base.descriptor), ".vmdk")
	var name string
	for n := 1; ; n++ {
		name = fmt.Sprintf("%s-%06d", stem, n)
		if _, err := os.Stat(filepath.Join(dir, name+".vmdk")); errors.Is(err, os.ErrNotExist) {
			break
		}
	}
	nf := &diskFile{
		dsPath:     strings.TrimSuffix(base.dsPath, filepath.Base(base.descriptor)) + name + ".vmdk",
		descriptor: filepath.Join(dir, name+".vmdk"),
		extent:     filepath.Join(dir, name+"-delta.vmdk"),
		delta:      true,
		cid:        randomHex(4),
		have:       make([]bool, d.grains()),
	}
	f, err := os.OpenFile(nf.extent, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vcsim: create delta: %w", err)
	}
	if err := f.Truncate(d.capacity); err != nil {
		f.Close()
		os.Remove(nf.extent)
		return nil, fmt.Errorf("vcsim: create delta: %w", err)
	}
	nf.f = f
	desc := fmt.Sprintf(`# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=%s
parentCID=%s
createType="vmfsSparse"
parentFileNameHint="%s"
# hypersdk-sim: the delta extent is a sparse raw file of the disk's size; its allocated
# 64 KiB grains are the grains this delta holds, the others come from the parent.
# Extent description
RW %d VMFSSPARSE "%s"

# The Disk Data Base
#DDB

ddb.longContentID = "%s"
`, nf.cid, top.cid, filepath.Base(top.descriptor), d.capacity/512, filepath.Base(nf.extent), randomHex(16))
	if err := os.WriteFile(nf.descriptor, []byte(desc), 0o644); err != nil {
		f.Close()
		os.Remove(nf.extent)
		return nil, fmt.Errorf("vcsim: create delta: %w", err)
	}
	d.chain = append(d.chain, nf)
	return nf, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// readGrain reads grain g as the chain up to file top (inclusive) shows it.
func (d *chainDisk) readGrain(p []byte, g int64, top int) error {
	for i := top; i >= 0; i-- {
		if f := d.chain[i]; f.present(g) {
			return readFull(f.f, p[:d.grainLen(g)], g*grain)
		}
	}
	return errors.New("vcsim: a chain without a base disk")
}

func (d *chainDisk) grainLen(g int64) int64 { return min(grain, d.capacity-g*grain) }

func readFull(f *os.File, p []byte, off int64) error {
	_, err := f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p) // an extent shorter than the disk reads as zeros past its end
		return nil
	}
	return err
}

// ReadAt reads the disk as the chain up to file top shows it.
func (d *chainDisk) readAt(p []byte, off int64, top int) error {
	buf := make([]byte, grain)
	for len(p) > 0 {
		g := off / grain
		if err := d.readGrain(buf, g, top); err != nil {
			return err
		}
		n := copy(p, buf[off-g*grain:d.grainLen(g)])
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// writeAt writes into the top of the chain, copying up the grains a delta lacks first, and
// records the write for change tracking at epoch (0: tracking is off).
func (d *chainDisk) writeAt(p []byte, off int64, epoch uint32) error {
	if off < 0 || off+int64(len(p)) > d.capacity {
		return fmt.Errorf("vcsim: write of %d bytes at %d outside the disk of %d", len(p), off, d.capacity)
	}
	top := d.chain[len(d.chain)-1]
	end := off + int64(len(p))
	var buf []byte
	for g := off / grain; g*grain < end; g++ {
		lo, hi := max(off, g*grain), min(end, g*grain+d.grainLen(g))
		if top.delta && !top.have[g] {
			if buf == nil {
				buf = make([]byte, grain)
			}
			b := buf[:d.grainLen(g)]
			if err := d.readGrain(b, g, len(d.chain)-2); err != nil {
				return err
			}
			copy(b[lo-g*grain:], p[lo-off:hi-off])
			if _, err := top.f.WriteAt(b, g*grain); err != nil {
				return err
			}
			top.have[g] = true
		} else if _, err := top.f.WriteAt(p[lo-off:hi-off], lo); err != nil {
			return err
		}
		if epoch > 0 {
			d.lastWrite[g] = epoch
		}
		d.dirty[g] = true
	}
	d.written += int64(len(p))
	d.writes++
	return nil
}

// mergeDown merges file i+1 into file i (the snapshot that froze file i goes away) and
// drops file i+1.
func (d *chainDisk) mergeDown(i int) error {
	child, parent := d.chain[i+1], d.chain[i]
	buf := make([]byte, grain)
	for g := range child.have {
		if !child.have[g] {
			continue
		}
		b := buf[:d.grainLen(int64(g))]
		if err := readFull(child.f, b, int64(g)*grain); err != nil {
			return err
		}
		if _, err := parent.f.WriteAt(b, int64(g)*grain); err != nil {
			return err
		}
		if parent.delta {
			parent.have[g] = true
		}
	}
	if err := parent.f.Sync(); err != nil {
		return err
	}
	child.f.Close()
	_ = os.Remove(child.extent)
	_ = os.Remove(child.descriptor)
	d.chain = append(d.chain[:i+1], d.chain[i+2:]...)
	return nil
}

// allocated lists the grains that hold data in the chain up to file top, as byte ranges
// rounded out to grains: the base's allocated blocks (SEEK_DATA) and every grain of a delta.
func (d *chainDisk) allocated(top int) ([]Range, error) {
	in := make([]bool, d.grains())
	base := d.chain[0]
	fd := int(base.f.Fd())
	for pos := int64(0); pos < d.capacity; {
		data, err := syscall.Seek(fd, pos, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("vcsim: SEEK_DATA %s: %w", base.extent, err)
		}
		hole, err := syscall.Seek(fd, data, seekHole)
		if err != nil {
			return nil, fmt.Errorf("vcsim: SEEK_HOLE %s: %w", base.extent, err)
		}
		hole = min(hole, d.capacity)
		for g := data / grain; g*grain < hole; g++ {
			in[g] = true
		}
		pos = hole
	}
	for _, f := range d.chain[1 : top+1] {
		for g, h := range f.have {
			in[g] = in[g] || h
		}
	}
	return d.ranges(func(g int64) bool { return in[g] }), nil
}

// ranges merges the grains for which pick is true into byte ranges.
func (d *chainDisk) ranges(pick func(g int64) bool) []Range {
	var out []Range
	for g := int64(0); g < d.grains(); g++ {
		if !pick(g) {
			continue
		}
		off, n := g*grain, d.grainLen(g)
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == off {
			out[k].Len += n
		} else {
			out = append(out, Range{Off: off, Len: n})
		}
	}
	return out
}

// Range is a byte range of a disk.
type Range struct{ Off, Len int64 }
