package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// HTTPSSource is a disk on a datastore, reachable through the vCenter/ESXi /folder URL.
type HTTPSSource struct {
	// DescriptorURL is the /folder URL of the .vmdk text descriptor, e.g.
	// https://vc/folder/vm1/vm1.vmdk?dcPath=DC0&dsName=datastore1. The flat extents are
	// resolved next to it.
	DescriptorURL string
	// Header is sent with every request: normally the session cookie of the govmomi login
	// (Cookie: vmware_soap_session=...). It is a secret: it stays in this process and is
	// never logged.
	Header http.Header
	Trust  Trust
}

// sourceExtent is one flat extent to read.
type sourceExtent struct {
	url      string // where the file is
	offset   int64  // bytes into the file where the extent starts
	length   int64  // bytes
	fileSize int64
}

// HTTPS copies a flat disk: it reads the descriptor, checks each extent with a HEAD, and
// copies the extents with the parallel copier (Copy): Config.Connections keep-alive
// connections read pieces of Config.ReadSize as HTTP range requests, each piece retried on
// its own, zero blocks left out, the rest written straight into the image. Nothing is staged
// on disk and no tool runs for raw output (qemu-nbd writes qcow2). The trust, including a
// pinned thumbprint, is Go's own TLS configuration.
//
// Use it for powered-off VMs (or a disk frozen by a snapshot): the flat file of a running
// disk changes while it is read.
func (t *Transferer) HTTPS(ctx context.Context, src HTTPSSource, out Output) (*Result, error) {
	start := time.Now()
	if _, err := out.validate(); err != nil {
		return nil, err
	}
	u, err := url.Parse(src.DescriptorURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("descriptor URL %q: want an http(s) URL", redactURL(src.DescriptorURL))
	}
	if u.User != nil {
		// Credentials in a URL end up in logs and errors: they must come in Header.
		return nil, errors.New("descriptor URL carries credentials; pass the session cookie in Header instead")
	}
	log := t.log.With("method", MethodHTTPS, "disk", labelOr(out.Label, u.Path))

	client, err := src.Trust.httpClientConns(t.cfg.Connections)
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	desc, err := fetchDescriptor(ctx, client, src)
	if err != nil {
		return nil, err
	}
	if !desc.IsFlat() {
		return nil, fmt.Errorf("%w: %s is %q with extents %s: the https method copies flat disks only (use nfc or vddk)",
			ErrUnsupportedDisk, redactURL(src.DescriptorURL), desc.CreateType, extentTypes(desc))
	}
	extents, err := headExtents(ctx, client, src, desc)
	if err != nil {
		return nil, err
	}
	log.Info("https transfer starting", "capacity", desc.Capacity(), "extents", len(extents), "adapter", desc.AdapterType)
	disk := newHTTPSDisk(client, src.Header, extents, redactURL(src.DescriptorURL))
	if disk.Capacity() != desc.Capacity() {
		return nil, fmt.Errorf("%w: %s: extents add up to %d bytes, the descriptor says %d", ErrBadDescriptor,
			redactURL(src.DescriptorURL), disk.Capacity(), desc.Capacity())
	}
	defer disk.close()
	res, err := t.Copy(ctx, disk, out)
	if err != nil {
		return nil, err
	}
	res.Method, res.Descriptor, res.Duration = MethodHTTPS, desc, time.Since(start)
	return res, nil
}

// httpsDisk reads a flat disk, the concatenation of its extents, with HTTP range requests.
// A request covers the rest of the copier's span (or of the extent), and the pieces of the
// span are read from its body one after the other: while the copier writes one piece, the
// next is already on its way, and the server sees one request per span, not per piece. The
// client's transport keeps one connection per worker alive between requests.
type httpsDisk struct {
	client  *http.Client
	header  http.Header
	extents []sourceExtent
	starts  []int64 // disk offset of each extent
	size    int64
	name    string

	mu   sync.Mutex
	span int64                // the copier's span (0: one piece per request)
	open map[int64]*openRange // bodies of requests not read to the end, by the disk offset they continue at
}

// openRange is a range request whose body has been read up to a piece boundary.
type openRange struct {
	body   io.ReadCloser
	cancel context.CancelFunc
	left   int64 // bytes of the body not yet read
	url    string
	at     int64 // file offset of the next byte of the body
}

func (r *openRange) close() {
	r.cancel()
	r.body.Close()
}

func newHTTPSDisk(client *http.Client, header http.Header, extents []sourceExtent, name string) *httpsDisk {
	d := &httpsDisk{client: client, header: header, extents: extents, name: name, open: map[int64]*openRange{}}
	for _, e := range extents {
		d.starts = append(d.starts, d.size)
		d.size += e.length
	}
	return d
}

func (d *httpsDisk) Capacity() int64 { return d.size }
func (d *httpsDisk) Name() string    { return d.name }

func (d *httpsDisk) setSpan(size int64) {
	d.mu.Lock()
	d.span = size
	d.mu.Unlock()
}

// Extents: a datastore's /folder URL says nothing about allocation.
func (d *httpsDisk) Extents(context.Context) ([]DiskRange, bool, error) { return nil, false, nil }

// close ends the requests still open (a copy that failed or was cancelled midway).
func (d *httpsDisk) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, r := range d.open {
		r.close()
		delete(d.open, k)
	}
}

func (d *httpsDisk) ReadAt(ctx context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		// The extent holding off: the last one starting at or before it.
		i := sort.Search(len(d.starts), func(i int) bool { return d.starts[i] > off }) - 1
		if i < 0 || off >= d.size {
			return Permanent(fmt.Errorf("read at %d beyond the disk's %d bytes", off, d.size))
		}
		rel := off - d.starts[i]
		n := min(int64(len(p)), d.extents[i].length-rel)
		if err := d.read(ctx, i, off, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// read fills p (within extent i) at disk offset off: from the open request that has got
// exactly there, else from a new request up to the end of the span (or the extent).
func (d *httpsDisk) read(ctx context.Context, i int, off int64, p []byte) error {
	e := d.extents[i]
	d.mu.Lock()
	r := d.open[off]
	delete(d.open, off)
	span := d.span
	d.mu.Unlock()
	if r == nil {
		end := d.starts[i] + e.length // disk offset where the extent ends
		if span > 0 {
			end = min(end, (off/span+1)*span)
		}
		end = max(end, off+int64(len(p)))
		var err error
		if r, err = d.request(ctx, e.url, e.offset+off-d.starts[i], end-off); err != nil {
			return err
		}
	}
	// The body belongs to the request's own context (it outlives this call); this call's
	// deadline or cancel ends it too.
	stop := context.AfterFunc(ctx, r.cancel)
	_, err := io.ReadFull(r.body, p)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		r.close()
		if cerr := ctx.Err(); cerr != nil {
			err = cerr // the attempt's deadline (or the copy's cancel) ended the body
		}
		return fmt.Errorf("GET %s bytes %d-%d: body: %w", redactURL(r.url), r.at, r.at+int64(len(p))-1, err)
	}
	r.left -= int64(len(p))
	r.at += int64(len(p))
	if r.left > 0 {
		d.mu.Lock()
		d.open[off+int64(len(p))] = r
		d.mu.Unlock()
		return nil
	}
	// Reading to the end of the body is what lets the transport reuse the connection.
	defer r.close()
	var extra [1]byte
	if n, err := r.body.Read(extra[:]); n > 0 {
		return Permanent(fmt.Errorf("%w: %s: more bytes than the range asked for", ErrSource, redactURL(r.url)))
	} else if err != nil && err != io.EOF {
		return fmt.Errorf("GET %s: end of body: %w", redactURL(r.url), err)
	}
	return nil
}

// request asks for n bytes of the file at u from byte from. A response that is not exactly
// the range asked for is never taken for data.
func (d *httpsDisk) request(ctx context.Context, u string, from, n int64) (*openRange, error) {
	to := from + n - 1
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel) // until the headers are in, ctx governs
	defer stop()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, Permanent(err)
	}
	addHeader(req, d.header)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	resp, err := d.client.Do(req)
	if err != nil {
		cancel()
		if isCertError(err) {
			return nil, Permanent(tlsHint(err))
		}
		return nil, fmt.Errorf("bytes %d-%d: %w", from, to, err) // err names the method and URL
	}
	r := &openRange{body: resp.Body, cancel: cancel, left: n, url: u, at: from}
	switch {
	case resp.StatusCode == http.StatusPartialContent:
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout:
		r.close()
		return nil, statusError(resp, u)
	default:
		// 200 (the range was ignored), 401/403 (session gone), 404, 416: another attempt
		// gets the same answer.
		r.close()
		return nil, Permanent(statusError(resp, u, http.StatusPartialContent))
	}
	if got := resp.Header.Get("Content-Range"); !strings.HasPrefix(got, fmt.Sprintf("bytes %d-%d/", from, to)) {
		r.close()
		return nil, Permanent(fmt.Errorf("%w: %s: asked for bytes %d-%d, the server answered Content-Range %q", ErrSource, redactURL(u), from, to, got))
	}
	return r, nil
}

func fetchDescriptor(ctx context.Context, client *http.Client, src HTTPSSource) (*Descriptor, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.DescriptorURL, nil)
	if err != nil {
		return nil, err
	}
	addHeader(req, src.Header)
	resp, err := client.Do(req)
	if err != nil {
		if cerr := ctxErr(ctx, "transfer"); cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("fetching descriptor %s: %w", redactURL(src.DescriptorURL), tlsHint(err))
	}
	defer resp.Body.Close()
	if err := statusError(resp, src.DescriptorURL, http.StatusOK); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxDescriptorSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading descriptor %s: %v", ErrSource, redactURL(src.DescriptorURL), err)
	}
	d, err := ParseDescriptor(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", redactURL(src.DescriptorURL), err)
	}
	return d, nil
}

// headExtents checks every extent before any process starts, so the common failures (file
// missing, session expired, extent shorter than the descriptor says, no range support) get
// a precise message instead of an NBD error.
func headExtents(ctx context.Context, client *http.Client, src HTTPSSource, d *Descriptor) ([]sourceExtent, error) {
	var out []sourceExtent
	for _, e := range d.Extents {
		eu, err := ExtentURL(src.DescriptorURL, e.File)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, eu, nil)
		if err != nil {
			return nil, err
		}
		addHeader(req, src.Header)
		resp, err := client.Do(req)
		if err != nil {
			if cerr := ctxErr(ctx, "transfer"); cerr != nil {
				return nil, cerr
			}
			return nil, fmt.Errorf("checking extent %s: %w", redactURL(eu), tlsHint(err))
		}
		resp.Body.Close()
		if err := statusError(resp, eu, http.StatusOK); err != nil {
			return nil, err
		}
		need := (e.Offset + e.Sectors) * SectorSize
		if resp.ContentLength < 0 {
			return nil, fmt.Errorf("%w: %s: server sent no Content-Length", ErrSource, redactURL(eu))
		}
		if resp.ContentLength < need {
			return nil, fmt.Errorf("%w: extent %s is %d bytes but the descriptor needs %d (truncated file?)",
				ErrSource, redactURL(eu), resp.ContentLength, need)
		}
		if !strings.EqualFold(resp.Header.Get("Accept-Ranges"), "bytes") {
			return nil, fmt.Errorf("%w: %s: server does not accept range requests (use nfc)", ErrUnsupportedDisk, redactURL(eu))
		}
		out = append(out, sourceExtent{url: eu, offset: e.Offset * SectorSize, length: e.Sectors * SectorSize, fileSize: resp.ContentLength})
	}
	return out, nil
}

func statusError(resp *http.Response, u string, want ...int) error {
	for _, w := range want {
		if resp.StatusCode == w {
			return nil
		}
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%w: %s: HTTP %d: the session was rejected (expired or missing session cookie)", ErrSource, redactURL(u), resp.StatusCode)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s: HTTP 404: no such file on the datastore", ErrSource, redactURL(u))
	default:
		return fmt.Errorf("%w: %s: HTTP %s", ErrSource, redactURL(u), resp.Status)
	}
}

func addHeader(req *http.Request, h http.Header) {
	for k, vs := range h {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
}

// headerSecrets lists header values (and cookie values) to scrub from messages.
func headerSecrets(h http.Header) []string {
	var s []string
	for _, vs := range h {
		for _, v := range vs {
			s = append(s, v)
			for _, part := range strings.Split(v, ";") {
				if _, val, ok := strings.Cut(strings.TrimSpace(part), "="); ok {
					s = append(s, strings.Trim(val, `"`))
				}
			}
		}
	}
	return s
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<bad url>"
	}
	return u.Redacted()
}

func extentTypes(d *Descriptor) string {
	var ts []string
	for _, e := range d.Extents {
		ts = append(ts, e.Type)
	}
	if d.HasParent() {
		ts = append(ts, "(delta disk with a parent)")
	}
	return strings.Join(ts, ",")
}

func labelOr(label, fallback string) string {
	if label != "" {
		return label
	}
	return fallback
}
