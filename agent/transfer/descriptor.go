package transfer

import (
	"bytes"
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// SectorSize is the VMDK sector: every size in a descriptor or sparse header counts these.
const SectorSize = 512

// Limits that keep a hostile or corrupt descriptor from costing memory or overflowing sizes.
const (
	// MaxDescriptorSize bounds what we read: real descriptors are a few hundred bytes, the
	// embedded one of a sparse VMDK at most a few KiB.
	MaxDescriptorSize = 64 << 10
	maxExtents        = 1024
	// maxDiskSectors is 2^47 sectors = 64 PiB, far above VMFS's 62 TB limit, low enough
	// that sums of extents and sector→byte conversions cannot overflow int64.
	maxDiskSectors = int64(1) << 47
)

// Extent types as written in descriptors.
const (
	ExtentFlat       = "FLAT"
	ExtentVMFS       = "VMFS"
	ExtentSparse     = "SPARSE"
	ExtentZero       = "ZERO"
	ExtentVMFSSparse = "VMFSSPARSE"
	ExtentSESparse   = "SESPARSE"
	ExtentVMFSRDM    = "VMFSRDM"
	ExtentVMFSRaw    = "VMFSRAW"
)

// Extent is one line of the descriptor's extent section:
//
//	RW 20971520 VMFS "disk1-flat.vmdk" 0
type Extent struct {
	Access  string // RW, RDONLY or NOACCESS
	Sectors int64  // size in sectors
	Type    string // FLAT, VMFS, SPARSE, ZERO, ...
	File    string // file name relative to the descriptor; empty for ZERO
	Offset  int64  // for flat extents: where the extent starts inside File, in sectors
}

// Flat reports whether the extent is raw bytes in a file (readable with plain ranged GETs).
func (e Extent) Flat() bool {
	return e.Type == ExtentFlat || e.Type == ExtentVMFS
}

// Geometry is the legacy CHS geometry from the disk database.
type Geometry struct {
	Cylinders, Heads, Sectors int64
}

// Descriptor is a parsed text VMDK descriptor.
type Descriptor struct {
	Version            int
	CID                string
	ParentCID          string
	CreateType         string
	ParentFileNameHint string
	Extents            []Extent
	AdapterType        string // ddb.adapterType: ide, buslogic, lsilogic, legacyESX, pvscsi, ...
	Geometry           Geometry
	// Fields holds every key = value line (header and ddb.*) with quotes removed, for
	// what the typed fields do not cover (ddb.uuid, ddb.virtualHWVersion, ...).
	Fields map[string]string
}

// noParent is the parentCID of a disk without a parent.
const noParent = "ffffffff"

// Capacity is the virtual disk size in bytes (the sum of all extents).
func (d *Descriptor) Capacity() int64 {
	var n int64
	for _, e := range d.Extents {
		n += e.Sectors
	}
	return n * SectorSize
}

// HasParent reports whether the disk is a delta (snapshot child) whose content depends on
// another disk; such a disk cannot be copied by reading its own extents.
func (d *Descriptor) HasParent() bool {
	return (d.ParentCID != "" && !strings.EqualFold(d.ParentCID, noParent)) || d.ParentFileNameHint != ""
}

// IsFlat reports whether every extent is a flat file and the disk has no parent: the
// condition for the https method, which copies extent bytes as they are.
func (d *Descriptor) IsFlat() bool {
	if len(d.Extents) == 0 || d.HasParent() {
		return false
	}
	for _, e := range d.Extents {
		if !e.Flat() {
			return false
		}
	}
	return true
}

// ParseDescriptor parses a text VMDK descriptor. It is strict where a mistake would copy the
// wrong bytes (extent lines, sizes, offsets) and lenient elsewhere: unknown keys are kept,
// comments, blank lines, CRLF and a missing final newline are accepted.
func ParseDescriptor(b []byte) (*Descriptor, error) {
	if len(b) > MaxDescriptorSize {
		return nil, fmt.Errorf("%w: %d bytes, larger than %d", ErrBadDescriptor, len(b), MaxDescriptorSize)
	}
	if bytes.HasPrefix(b, []byte("KDMV")) {
		return nil, fmt.Errorf("%w: this is a binary sparse VMDK (monolithic sparse or stream-optimized), not a text descriptor", ErrBadDescriptor)
	}
	// The embedded descriptor of a sparse VMDK is NUL padded to its sector count: stop there.
	if i := bytes.IndexByte(b, 0); i >= 0 {
		if len(bytes.Trim(b[i:], "\x00")) != 0 {
			return nil, fmt.Errorf("%w: binary data (NUL byte at offset %d)", ErrBadDescriptor, i)
		}
		b = b[:i]
	}
	d := &Descriptor{Fields: map[string]string{}}
	sawHeader := false
	for n, raw := range strings.Split(string(b), "\n") {
		lineNo := n + 1
		line := strings.TrimSpace(strings.TrimSuffix(raw, "\r"))
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			if strings.HasPrefix(line, "# Disk DescriptorFile") {
				sawHeader = true
			}
			continue
		}
		if isExtentLine(line) {
			if len(d.Extents) >= maxExtents {
				return nil, fmt.Errorf("%w: more than %d extents", ErrBadDescriptor, maxExtents)
			}
			e, err := parseExtent(line)
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: %v", ErrBadDescriptor, lineNo, err)
			}
			d.Extents = append(d.Extents, e)
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: neither key=value nor an extent: %q", ErrBadDescriptor, lineNo, clip(line))
		}
		key = strings.TrimSpace(key)
		if key == "" || strings.ContainsAny(key, " \t\"") {
			return nil, fmt.Errorf("%w: line %d: bad key %q", ErrBadDescriptor, lineNo, clip(key))
		}
		val = unquote(strings.TrimSpace(val))
		d.Fields[key] = val
		sawHeader = true
	}
	if !sawHeader && len(d.Extents) == 0 {
		return nil, fmt.Errorf("%w: no descriptor header, keys or extents", ErrBadDescriptor)
	}
	if len(d.Extents) == 0 {
		return nil, fmt.Errorf("%w: no extent lines", ErrBadDescriptor)
	}
	var total int64
	for _, e := range d.Extents {
		total += e.Sectors // each ≤ maxDiskSectors, count ≤ maxExtents: no overflow
	}
	if total > maxDiskSectors {
		return nil, fmt.Errorf("%w: disk of %d sectors is larger than supported", ErrBadDescriptor, total)
	}
	d.CreateType = d.Fields["createType"]
	d.CID = d.Fields["CID"]
	d.ParentCID = d.Fields["parentCID"]
	d.ParentFileNameHint = d.Fields["parentFileNameHint"]
	d.AdapterType = d.Fields["ddb.adapterType"]
	if v, ok := d.Fields["version"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: bad version %q", ErrBadDescriptor, clip(v))
		}
		d.Version = n
	}
	for key, dst := range map[string]*int64{
		"ddb.geometry.cylinders": &d.Geometry.Cylinders,
		"ddb.geometry.heads":     &d.Geometry.Heads,
		"ddb.geometry.sectors":   &d.Geometry.Sectors,
	} {
		if v, ok := d.Fields[key]; ok {
			// Geometry is informational (libvirt ignores it for virtio): a garbled value
			// must not fail a migration, so it is left zero.
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				*dst = n
			}
		}
	}
	return d, nil
}

var extentAccess = []string{"RW", "RDONLY", "NOACCESS"}

func isExtentLine(line string) bool {
	for _, a := range extentAccess {
		if strings.HasPrefix(line, a+" ") || strings.HasPrefix(line, a+"\t") {
			return true
		}
	}
	return false
}

func parseExtent(line string) (Extent, error) {
	var e Extent
	rest := line
	e.Access, rest = nextField(rest)
	var size string
	size, rest = nextField(rest)
	n, err := strconv.ParseInt(size, 10, 64)
	if err != nil || n < 0 || n > maxDiskSectors {
		return e, fmt.Errorf("bad extent size %q", clip(size))
	}
	e.Sectors = n
	e.Type, rest = nextField(rest)
	e.Type = strings.ToUpper(e.Type)
	switch e.Type {
	case ExtentFlat, ExtentVMFS, ExtentSparse, ExtentZero, ExtentVMFSSparse, ExtentSESparse, ExtentVMFSRDM, ExtentVMFSRaw:
	default:
		return e, fmt.Errorf("unknown extent type %q", clip(e.Type))
	}
	rest = strings.TrimSpace(rest)
	if e.Type == ExtentZero {
		if rest != "" {
			return e, fmt.Errorf("ZERO extent with a file name")
		}
		return e, nil
	}
	if !strings.HasPrefix(rest, `"`) {
		return e, fmt.Errorf("extent file name must be quoted")
	}
	end := strings.IndexByte(rest[1:], '"')
	if end < 0 {
		return e, fmt.Errorf("unterminated extent file name")
	}
	e.File = rest[1 : 1+end]
	if e.File == "" {
		return e, fmt.Errorf("empty extent file name")
	}
	rest = strings.TrimSpace(rest[2+end:])
	if rest != "" {
		off, tail := nextField(rest)
		o, err := strconv.ParseInt(off, 10, 64)
		if err != nil || o < 0 || o > maxDiskSectors {
			return e, fmt.Errorf("bad extent offset %q", clip(off))
		}
		if strings.TrimSpace(tail) != "" {
			return e, fmt.Errorf("trailing data after extent offset")
		}
		e.Offset = o
	}
	return e, nil
}

func nextField(s string) (field, rest string) {
	s = strings.TrimLeft(s, " \t")
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// clip keeps error messages short when the input is garbage.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// ExtentURL resolves an extent file name against the URL of its descriptor: the extent lives
// in the same datastore folder, so only the last path element changes and the query
// (dcPath, dsName) is kept. Names that would leave the folder are refused, because a
// descriptor is data from the source and must not steer us to other files.
func ExtentURL(descriptorURL, file string) (string, error) {
	u, err := url.Parse(descriptorURL)
	if err != nil {
		return "", fmt.Errorf("descriptor URL: %w", err)
	}
	if file == "" || strings.HasPrefix(file, "/") || strings.Contains(file, "\\") {
		return "", fmt.Errorf("%w: extent file %q is not a name relative to the descriptor", ErrUnsupportedDisk, file)
	}
	for _, part := range strings.Split(file, "/") {
		if part == ".." || part == "." || part == "" {
			return "", fmt.Errorf("%w: extent file %q is not a name relative to the descriptor", ErrUnsupportedDisk, file)
		}
	}
	out := *u
	out.Path = path.Join(path.Dir(u.Path), file)
	out.RawPath = ""
	return out.String(), nil
}
