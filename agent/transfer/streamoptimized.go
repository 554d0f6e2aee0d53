package transfer

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The stream-optimized VMDK (what ESXi's HttpNfcLease serves for ExportVm) is laid out so it
// can be written and read front to back:
//
//	sector 0           sparse header ("KDMV", capacity, grain size, overhead, flags)
//	descriptorOffset   embedded text descriptor
//	overHead           first marker; from here on, sector aligned:
//	  grain marker     {lba uint64, size uint32 (>0), size bytes of zlib data} padded to 512
//	  metadata marker  {numSectors uint64, 0 uint32, type uint32} padded to 512, then
//	                   numSectors of grain table / grain directory / footer
//	  end-of-stream    a metadata marker of type 0
//
// Holes are simply absent grains. Grain tables, directory and footer only repeat where the
// grains were, so a streaming reader skips them. qemu-img (7.2) writes no metadata markers
// and no end-of-stream marker at all (its tables sit in the header area); a clean EOF on a
// marker boundary is therefore accepted as the end, and truncation inside a marker or grain
// is an error. Truncation of the HTTP body itself is caught by the HTTP layer (chunked
// terminator or Content-Length).

const (
	sparseMagic        = 0x564d444b // "KDMV" little endian
	flagValidNewline   = 1 << 0
	flagCompressed     = 1 << 16
	flagMarkers        = 1 << 17
	compressionDeflate = 1

	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3

	// maxGrainSectors bounds the grain (and so each allocation): VMware uses 128 sectors
	// (64 KiB); 2048 sectors (1 MiB) leaves room for any producer.
	maxGrainSectors = 2048
	// maxOverheadSectors bounds what we skip before the first marker (VMware: 128).
	maxOverheadSectors = 1 << 20
	// maxMetadataSectors bounds one metadata marker's payload (a GD of a 62 TB disk is
	// ~ 2 MiB; 1 GiB is an obviously corrupt value).
	maxMetadataSectors = 1 << 21
)

// SparseHeader is the fixed 512-byte header of a sparse VMDK extent.
type SparseHeader struct {
	Version           uint32
	Flags             uint32
	CapacitySectors   int64
	GrainSectors      int64
	DescriptorOffset  int64
	DescriptorSectors int64
	NumGTEsPerGT      uint32
	OverheadSectors   int64
	CompressAlgorithm uint16
}

// Grain is one decoded grain: Data belongs at byte Offset of the virtual disk. Data is
// reused by the next call to Next.
type Grain struct {
	Offset int64
	Data   []byte
}

// StreamOptimizedReader decodes a stream-optimized VMDK as it arrives, without seeking and
// without buffering more than one grain.
type StreamOptimizedReader struct {
	r          *bufio.Reader
	pos        int64 // bytes consumed from the stream
	hdr        SparseHeader
	desc       *Descriptor
	grainBytes int
	capacity   int64
	done       bool
	sawEOS     bool

	comp   []byte // compressed grain, reused
	out    []byte // decompressed grain, reused
	zr     io.ReadCloser
	cbuf   bytes.Reader
	marker [SectorSize]byte
}

// NewStreamOptimizedReader reads and checks the header and embedded descriptor.
func NewStreamOptimizedReader(r io.Reader) (*StreamOptimizedReader, error) {
	// Smaller than a grain: bufio hands reads of at least its size straight to r, so the
	// grains bypass this buffer (one copy less) while markers are still read from it.
	s := &StreamOptimizedReader{r: bufio.NewReaderSize(r, 16<<10)}
	var h [SectorSize]byte
	if err := s.readFull(h[:]); err != nil {
		return nil, fmt.Errorf("%w: reading header: %v", ErrBadStream, err)
	}
	if binary.LittleEndian.Uint32(h[0:]) != sparseMagic {
		return nil, fmt.Errorf("%w: no KDMV magic (not a sparse VMDK)", ErrBadStream)
	}
	hdr := SparseHeader{
		Version:           binary.LittleEndian.Uint32(h[4:]),
		Flags:             binary.LittleEndian.Uint32(h[8:]),
		CapacitySectors:   int64(binary.LittleEndian.Uint64(h[12:])),
		GrainSectors:      int64(binary.LittleEndian.Uint64(h[20:])),
		DescriptorOffset:  int64(binary.LittleEndian.Uint64(h[28:])),
		DescriptorSectors: int64(binary.LittleEndian.Uint64(h[36:])),
		NumGTEsPerGT:      binary.LittleEndian.Uint32(h[44:]),
		OverheadSectors:   int64(binary.LittleEndian.Uint64(h[64:])),
		CompressAlgorithm: binary.LittleEndian.Uint16(h[77:]),
	}
	s.hdr = hdr
	switch {
	case hdr.Flags&flagCompressed == 0 || hdr.Flags&flagMarkers == 0:
		return nil, fmt.Errorf("%w: sparse VMDK without compressed grains and markers (flags %#x) is not stream-optimized", ErrUnsupportedDisk, hdr.Flags)
	case hdr.CompressAlgorithm != compressionDeflate:
		return nil, fmt.Errorf("%w: compression algorithm %d, only deflate (1) is defined", ErrBadStream, hdr.CompressAlgorithm)
	case hdr.CapacitySectors < 0 || hdr.CapacitySectors > maxDiskSectors:
		return nil, fmt.Errorf("%w: capacity %d sectors out of range", ErrBadStream, hdr.CapacitySectors)
	case hdr.GrainSectors < 1 || hdr.GrainSectors > maxGrainSectors || hdr.GrainSectors&(hdr.GrainSectors-1) != 0:
		return nil, fmt.Errorf("%w: grain size %d sectors (want a power of two up to %d)", ErrBadStream, hdr.GrainSectors, maxGrainSectors)
	case hdr.OverheadSectors < 1 || hdr.OverheadSectors > maxOverheadSectors:
		return nil, fmt.Errorf("%w: overhead %d sectors out of range", ErrBadStream, hdr.OverheadSectors)
	}
	s.grainBytes = int(hdr.GrainSectors) * SectorSize
	s.capacity = hdr.CapacitySectors * SectorSize

	// The descriptor must sit between the header and the first marker: a stream cannot go back.
	if hdr.DescriptorSectors > 0 {
		if hdr.DescriptorOffset < 1 || hdr.DescriptorSectors > MaxDescriptorSize/SectorSize ||
			hdr.DescriptorOffset+hdr.DescriptorSectors > hdr.OverheadSectors {
			return nil, fmt.Errorf("%w: descriptor at sector %d (+%d) is outside the header area of %d sectors",
				ErrBadStream, hdr.DescriptorOffset, hdr.DescriptorSectors, hdr.OverheadSectors)
		}
		if err := s.skipTo(hdr.DescriptorOffset * SectorSize); err != nil {
			return nil, fmt.Errorf("%w: reading up to the descriptor: %v", ErrBadStream, err)
		}
		buf := make([]byte, hdr.DescriptorSectors*SectorSize)
		if err := s.readFull(buf); err != nil {
			return nil, fmt.Errorf("%w: reading descriptor: %v", ErrBadStream, err)
		}
		d, err := ParseDescriptor(buf)
		if err != nil {
			return nil, fmt.Errorf("%w: embedded descriptor: %v", ErrBadStream, err)
		}
		s.desc = d
	}
	if err := s.skipTo(hdr.OverheadSectors * SectorSize); err != nil {
		return nil, fmt.Errorf("%w: reading header area: %v", ErrBadStream, err)
	}
	s.out = make([]byte, s.grainBytes)
	return s, nil
}

// Header returns the sparse header.
func (s *StreamOptimizedReader) Header() SparseHeader { return s.hdr }

// Descriptor returns the embedded descriptor (nil if the stream has none).
func (s *StreamOptimizedReader) Descriptor() *Descriptor { return s.desc }

// Capacity is the virtual disk size in bytes.
func (s *StreamOptimizedReader) Capacity() int64 { return s.capacity }

// Consumed is how many stream bytes have been read so far.
func (s *StreamOptimizedReader) Consumed() int64 { return s.pos }

// SawEndOfStream reports whether the stream ended with an end-of-stream marker (VMware
// always writes one; qemu-img does not).
func (s *StreamOptimizedReader) SawEndOfStream() bool { return s.sawEOS }

// NextCompressed returns the next grain still compressed: its byte offset in the virtual
// disk, and the zlib data (reused by the next call). It lets a caller inflate grains on
// several cores while one goroutine reads the stream. io.EOF ends the stream.
func (s *StreamOptimizedReader) NextCompressed() (offset int64, zdata []byte, err error) {
	offset, s.comp, err = s.appendNextCompressed(s.comp[:0])
	if err != nil {
		return 0, nil, err
	}
	return offset, s.comp, nil
}

// appendNextCompressed is NextCompressed appending the zlib data to dst (the caller's
// buffer of a run of grains), so the grain is copied once, from the stream into place.
func (s *StreamOptimizedReader) appendNextCompressed(dst []byte) (offset int64, out []byte, err error) {
	if s.done {
		return 0, dst, io.EOF
	}
	for {
		// Markers start on sector boundaries; s.pos is always aligned here.
		n, err := io.ReadFull(s.r, s.marker[:12])
		s.pos += int64(n)
		if err != nil {
			if err == io.EOF {
				// Clean end on a marker boundary: qemu-img's streams end like this.
				s.done = true
				return 0, dst, io.EOF
			}
			return 0, dst, fmt.Errorf("%w: truncated marker at stream byte %d: %v", ErrBadStream, s.pos-int64(n), unexpected(err))
		}
		val := int64(binary.LittleEndian.Uint64(s.marker[0:]))
		size := binary.LittleEndian.Uint32(s.marker[8:])
		if size == 0 {
			if err := s.readFull(s.marker[12:]); err != nil {
				return 0, dst, fmt.Errorf("%w: truncated metadata marker: %v", ErrBadStream, err)
			}
			typ := binary.LittleEndian.Uint32(s.marker[12:])
			switch typ {
			case markerEOS:
				s.done, s.sawEOS = true, true
				return 0, dst, io.EOF
			case markerGT, markerGD, markerFooter:
				if val < 0 || val > maxMetadataSectors {
					return 0, dst, fmt.Errorf("%w: metadata marker of %d sectors", ErrBadStream, val)
				}
				if err := s.skipTo(s.pos + val*SectorSize); err != nil {
					return 0, dst, fmt.Errorf("%w: truncated metadata (type %d): %v", ErrBadStream, typ, err)
				}
				continue
			default:
				return 0, dst, fmt.Errorf("%w: unknown marker type %d at stream byte %d", ErrBadStream, typ, s.pos-SectorSize)
			}
		}
		lba := val
		// A deflated grain can exceed the grain a little (incompressible data plus zlib
		// framing) but never by much; a larger size is corruption, and bounding it bounds memory.
		if int64(size) > int64(s.grainBytes)+int64(s.grainBytes)/8+1024 {
			return 0, dst, fmt.Errorf("%w: grain of %d compressed bytes for a %d-byte grain", ErrBadStream, size, s.grainBytes)
		}
		if lba < 0 || lba%s.hdr.GrainSectors != 0 || lba >= s.hdr.CapacitySectors {
			return 0, dst, fmt.Errorf("%w: grain at sector %d (capacity %d, grain %d)", ErrBadStream, lba, s.hdr.CapacitySectors, s.hdr.GrainSectors)
		}
		dst = slices.Grow(dst, int(size))
		if err := s.readFull(dst[len(dst) : len(dst)+int(size)]); err != nil {
			return 0, dst, fmt.Errorf("%w: truncated grain at sector %d: %v", ErrBadStream, lba, err)
		}
		dst = dst[:len(dst)+int(size)]
		if err := s.skipTo(alignUp(s.pos, SectorSize)); err != nil {
			return 0, dst, fmt.Errorf("%w: truncated grain padding: %v", ErrBadStream, err)
		}
		return lba * SectorSize, dst, nil
	}
}

// Next returns the next grain decoded. io.EOF ends the stream.
func (s *StreamOptimizedReader) Next() (Grain, error) {
	off, z, err := s.NextCompressed()
	if err != nil {
		return Grain{}, err
	}
	data, zr, err := InflateGrain(s.zr, &s.cbuf, z, s.out, s.GrainLen(off))
	s.zr = zr
	if err != nil {
		return Grain{}, fmt.Errorf("grain at byte %d: %w", off, err)
	}
	return Grain{Offset: off, Data: data}, nil
}

// GrainLen is how many bytes the grain at offset holds: a full grain, or less for the last
// grain of a disk whose capacity is not a multiple of the grain size.
func (s *StreamOptimizedReader) GrainLen(offset int64) int {
	return int(min(int64(s.grainBytes), s.capacity-offset))
}

// InflateGrain decompresses one grain into out[:want]. zr is a previous zlib reader to reuse
// (or nil) and is returned for the next call; cbuf is scratch. A grain that inflates to more
// than want bytes is an error; one that inflates to less leaves the rest zero (producers may
// drop trailing zeros).
func InflateGrain(zr io.ReadCloser, cbuf *bytes.Reader, zdata, out []byte, want int) ([]byte, io.ReadCloser, error) {
	cbuf.Reset(zdata)
	var err error
	if zr == nil {
		zr, err = zlib.NewReader(cbuf)
	} else {
		err = zr.(zlib.Resetter).Reset(cbuf, nil)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: bad zlib header: %v", ErrBadStream, err)
	}
	out = out[:want]
	n, err := io.ReadFull(zr, out)
	switch {
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		clear(out[n:])
	case err != nil:
		return nil, zr, fmt.Errorf("%w: inflate: %v", ErrBadStream, err)
	default:
		// Full grain read: the zlib stream must end here (checksum verified on EOF).
		var one [1]byte
		if m, err := zr.Read(one[:]); m > 0 {
			return nil, zr, fmt.Errorf("%w: grain inflates to more than %d bytes", ErrBadStream, want)
		} else if err != nil && err != io.EOF {
			return nil, zr, fmt.Errorf("%w: inflate: %v", ErrBadStream, err)
		}
	}
	return out, zr, nil
}

func (s *StreamOptimizedReader) readFull(b []byte) error {
	n, err := io.ReadFull(s.r, b)
	s.pos += int64(n)
	return unexpected(err)
}

// skipTo discards stream bytes up to absolute stream offset off.
func (s *StreamOptimizedReader) skipTo(off int64) error {
	if off < s.pos {
		return fmt.Errorf("offset %d is behind the stream position %d", off, s.pos)
	}
	n, err := s.r.Discard(int(off - s.pos))
	s.pos += int64(n)
	return unexpected(err)
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// isZero reports whether b is all zero bytes; zero grains are skipped because the target
// starts zeroed, which keeps the output sparse.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		// bytes.Equal is the runtime's vectorised memequal: several GB/s.
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeroBlock [64 << 10]byte
