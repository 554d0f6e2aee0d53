package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// HTTPSSource is a disk on a datastore, reachable through the vCenter/ESXi /folder URL.
type HTTPSSource struct {
	// DescriptorURL is the /folder URL of the .vmdk text descriptor, e.g.
	// https://vc/folder/vm1/vm1.vmdk?dcPath=DC0&dsName=datastore1. The flat extents are
	// resolved next to it.
	DescriptorURL string
	// Header is sent with every request: normally the session cookie of the govmomi login
	// (Cookie: vmware_soap_session=...). It is a secret: it is handed to nbdkit in a 0600
	// file, never on its command line, and never logged.
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

// HTTPS copies a flat disk: it reads the descriptor, checks each extent with a HEAD, serves
// each extent as NBD with `nbdkit curl` (retry filter, read-only, on a private Unix socket)
// and converts with `qemu-img convert -W` into the output. Bytes stream from the source to
// the image; nothing is staged on disk. Zero blocks are detected by qemu-img (-S default
// 4 KiB) and left as holes, so the image is sparse.
//
// Use it for powered-off VMs (or a disk frozen by a snapshot): the flat file of a running
// disk changes while it is read.
func (t *Transferer) HTTPS(ctx context.Context, src HTTPSSource, out Output) (*Result, error) {
	start := time.Now()
	format, err := out.validate()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(src.DescriptorURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("descriptor URL %q: want an http(s) URL", redactURL(src.DescriptorURL))
	}
	if u.User != nil {
		// A URL is put on nbdkit's command line: credentials must come in Header.
		return nil, errors.New("descriptor URL carries credentials; pass the session cookie in Header instead")
	}
	log := t.log.With("method", MethodHTTPS, "disk", labelOr(out.Label, u.Path), "output", out.Path)
	secrets := headerSecrets(src.Header)

	client, err := src.Trust.httpClient()
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
	log.Info("https transfer starting", "capacity", desc.Capacity(), "extents", len(extents), "format", format,
		"adapter", desc.AdapterType, "proxy", src.Trust.viaProxy())

	dir, err := t.privateDir()
	if err != nil {
		return nil, err
	}
	defer removeAll(dir)

	// nbdkit's curl plugin cannot pin a certificate or use a Go tls.Config: in that case
	// it talks plain HTTP over a private Unix socket to an in-process proxy that applies
	// the trust (and adds the session header, so no secret file is needed at all).
	var px *rangeProxy
	if src.Trust.viaProxy() {
		urls := make([]string, len(extents))
		for i, e := range extents {
			urls[i] = e.url
		}
		px, err = startRangeProxy(client, src.Header, urls, filepath.Join(dir, "proxy.sock"), log)
		if err != nil {
			return nil, err
		}
		defer px.Close()
	}

	var servers []*child
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	var sockets []string
	for i, e := range extents {
		argv, err := t.nbdkitCurlArgs(dir, i, e, src, px)
		if err != nil {
			return nil, err
		}
		sock := filepath.Join(dir, fmt.Sprintf("nbd%d.sock", i))
		pid := filepath.Join(dir, fmt.Sprintf("nbd%d.pid", i))
		argv = append([]string{t.cfg.Nbdkit, "-r", "-f", "--exit-with-parent", "-U", sock, "-P", pid}, argv...)
		c, err := startChild(ctx, log, "nbdkit", argv, nil)
		if err != nil {
			return nil, err
		}
		servers = append(servers, c)
		if err := waitForFile(ctx, c, pid, t.cfg.ReadyTimeout); err != nil {
			if cerr := ctxErr(ctx, "transfer"); cerr != nil {
				return nil, cerr
			}
			return nil, fmt.Errorf("%w: %s", ErrTool, redact(err.Error(), secrets))
		}
		// nbdkit read the cookie while parsing its parameters (the retry filter reopens
		// the plugin, not the configuration): the file can go now rather than outlive a
		// crashed agent.
		_ = os.Remove(filepath.Join(dir, fmt.Sprintf("cookie%d", i)))
		sockets = append(sockets, "nbd+unix:///?socket="+sock)
	}

	names := make([]string, len(extents))
	for i, e := range extents {
		names[i] = redactURL(e.url)
	}
	tracker := newProgressTracker(out.Progress, desc.Capacity(), t.cfg.ProgressInterval, out.Label)
	if err := t.convert(ctx, log, sockets, servers, names, desc.Capacity(), format, out.Path, secrets, tracker); err != nil {
		return nil, err
	}
	if px != nil && px.failed() != nil {
		// qemu-img succeeded, so every byte arrived; a proxy error here was a retried one.
		log.Debug("proxy saw retried errors", "err", px.failed())
	}
	res := &Result{
		Method:         MethodHTTPS,
		Path:           out.Path,
		Format:         format,
		VirtualSize:    desc.Capacity(),
		AllocatedBytes: allocated(out.Path),
		SourceBytes:    desc.Capacity(),
		Duration:       time.Since(start),
		Descriptor:     desc,
	}
	log.Info("https transfer done", "bytes", res.VirtualSize, "allocated", res.AllocatedBytes,
		"seconds", res.Duration.Seconds(), "MBps", float64(res.VirtualSize)/1e6/res.Duration.Seconds())
	return res, nil
}

// nbdkitCurlArgs builds the filter, plugin and parameters for one extent (everything after
// nbdkit's own flags).
func (t *Transferer) nbdkitCurlArgs(dir string, i int, e sourceExtent, src HTTPSSource, px *rangeProxy) ([]string, error) {
	var argv []string
	needOffset := e.offset != 0 || e.fileSize != e.length
	if needOffset {
		// The extent is a window of its file (descriptor offset, or a file longer than
		// the extent): expose exactly that window.
		argv = append(argv, "--filter=offset")
	}
	// retry wraps the plugin directly: a dropped connection reopens curl and the read
	// is repeated, invisible to qemu-img.
	argv = append(argv, "--filter=retry", "curl")
	if px != nil {
		argv = append(argv, "url=http://localhost/"+strconv.Itoa(i), "unix-socket-path="+px.socket)
	} else {
		argv = append(argv, "url="+e.url)
		argv = append(argv, src.Trust.nbdkitArgs()...)
		cookie, other := splitHeader(src.Header)
		if cookie != "" {
			f, err := writeSecret(dir, fmt.Sprintf("cookie%d", i), cookie)
			if err != nil {
				return nil, err
			}
			argv = append(argv, "cookie=+"+f)
		}
		if len(other) > 0 {
			// header= would put the values on the command line; header-script reads
			// them from a private file instead.
			f, err := writeSecret(dir, fmt.Sprintf("headers%d", i), strings.Join(other, "\n")+"\n")
			if err != nil {
				return nil, err
			}
			if strings.ContainsAny(f, "'\\") {
				return nil, fmt.Errorf("temp dir %q must not contain quotes", dir)
			}
			argv = append(argv, "header-script=cat '"+f+"'")
		}
	}
	argv = append(argv,
		"protocols=http,https", // a redirect must not lead curl to file:// or other schemes
		"timeout="+strconv.Itoa(max(1, int(t.cfg.RequestTimeout.Seconds()))),
		"retries="+strconv.Itoa(t.cfg.Retries),
		"retry-delay="+strconv.Itoa(max(1, int(t.cfg.RetryDelay.Round(time.Second).Seconds()))),
	)
	if needOffset {
		argv = append(argv, "offset="+strconv.FormatInt(e.offset, 10), "range="+strconv.FormatInt(e.length, 10))
	}
	return argv, nil
}

// convert runs qemu-img convert from the NBD sources (concatenated, in order) into the
// output, reporting progress, then stops the servers. On failure the output is removed and
// the error names the cause: cancel, full disk, the source (server stderr), or qemu-img.
func (t *Transferer) convert(ctx context.Context, log *slog.Logger, sources []string, servers []*child, names []string,
	total int64, format, outPath string, secrets []string, tracker *progressTracker) error {
	tracker.Update(0)
	// -W: writes may complete out of order, so slow source reads do not stall the writer.
	// -m: parallel coroutines. No -n/--target-is-zero: qemu-img creates the target itself,
	// knows it reads as zeros, and with the default -S 4k skips zero blocks, leaving holes.
	argv := []string{t.cfg.QemuImg, "convert", "-p", "-W", "-m", strconv.Itoa(t.cfg.Coroutines), "-f", "raw", "-O", format}
	argv = append(argv, sources...)
	argv = append(argv, outPath)
	qi, err := startChild(ctx, log, "qemu-img", argv, &progressWriter{total: total, p: tracker})
	if err != nil {
		return err
	}
	werr := qi.wait()
	for _, s := range servers {
		s.stop()
	}
	if werr == nil {
		tracker.Finish()
		return nil
	}
	t.removeOutput(outPath)
	if cerr := ctxErr(ctx, "transfer"); cerr != nil {
		return cerr
	}
	qmsg := redact(qi.stderr.String(), secrets)
	if isNoSpace(qmsg) {
		return noSpaceError(outPath, total, lastLines(qmsg, 2))
	}
	for i, s := range servers {
		if msg := redact(s.stderr.String(), secrets); strings.Contains(msg, "error") {
			return fmt.Errorf("%w: reading %s failed (retried %d times): %s (qemu-img: %s)",
				ErrSource, names[i], t.cfg.Retries, lastLines(msg, 3), lastLines(qmsg, 1))
		}
	}
	return fmt.Errorf("%w: qemu-img convert exit %d: %s", ErrTool, exitStatus(werr), lastLines(qmsg, 3))
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

// splitHeader separates the cookie (nbdkit's cookie= parameter) from other headers
// ("Name: value" lines for header-script).
func splitHeader(h http.Header) (cookie string, other []string) {
	var cookies []string
	for k, vs := range h {
		if http.CanonicalHeaderKey(k) == "Cookie" {
			cookies = append(cookies, vs...)
			continue
		}
		for _, v := range vs {
			other = append(other, http.CanonicalHeaderKey(k)+": "+v)
		}
	}
	return strings.Join(cookies, "; "), other
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
