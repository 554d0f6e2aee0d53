package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

const testCookie = `vmware_soap_session="52a01262-bf93-ccce-d379-8dabb3e55560"`

func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/host-setup.sh installs it): %v", tool, err)
		}
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// makeFlatDisk writes a disk of size bytes: the first dataFrac of it random, the rest a hole,
// plus one random 64 KiB island in the hole so a converter that stops at the first hole
// is caught.
func makeFlatDisk(t testing.TB, path string, size int64, dataFrac float64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := int64(float64(size)*dataFrac) &^ 0xffff
	if _, err := io.CopyN(f, rand.Reader, data); err != nil {
		t.Fatal(err)
	}
	if size-data >= 4<<20 {
		island := make([]byte, 64<<10)
		_, _ = rand.Read(island)
		if _, err := f.WriteAt(island, size-(1<<20)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func descriptorText(extentFile string, sectors int64) string {
	return fmt.Sprintf(`# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW %d VMFS "%s"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "%d"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.uuid = "60 00 C2 9b 69 2f c9 76-74 c4 07 9e 10 87 3b f9"
ddb.virtualHWVersion = "14"
`, sectors, extentFile, sectors/(255*63))
}

// diskServer is a datastore: GET/HEAD /folder/<file> serves files from dir with
// http.ServeContent (Range, Content-Length, Accept-Ranges), after checking the session
// cookie. Faults are injected per test.
type diskServer struct {
	*httptest.Server
	dir string

	requests atomic.Int64
	served   atomic.Int64 // body bytes written

	mu sync.Mutex
	// dropOnceAfter: the first GET whose range crosses this byte offset is cut there and
	// the connection dropped; later requests succeed.
	dropOnceAfter int64
	dropped       bool
	// truncateAlways: every GET body stops after half its length and the connection drops.
	truncateAlways bool
	// bytesPerSec throttles the bodies of all GETs together, like a link of that speed
	// (0: no limit).
	bytesPerSec int64
	link        linkThrottle
	// nfcDropAfter: /nfc/ streams drop the connection after this many bytes (-1: never).
	nfcDropAfter int64
}

func newDiskServer(t testing.TB, dir string) *diskServer {
	s := &diskServer{dir: dir, dropOnceAfter: -1, nfcDropAfter: -1}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	// Handshake failures are expected in the untrusted-certificate tests: keep them quiet.
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func (s *diskServer) url(name string) string {
	return s.URL + "/folder/" + name + "?dcPath=DC0&dsName=LocalDS_0"
}

func (s *diskServer) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if r.Header.Get("Cookie") != testCookie {
		http.Error(w, "no session", http.StatusUnauthorized)
		return
	}
	switch {
	case strings.HasPrefix(r.URL.Path, "/folder/"):
		s.serveFolder(w, r)
	case strings.HasPrefix(r.URL.Path, "/nfc/"):
		s.serveNFC(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *diskServer) serveFolder(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/folder/")
	f, err := os.Open(filepath.Join(s.dir, filepath.Base(name)))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, _ := f.Stat()
	var body io.ReadSeeker = f
	if r.Method == http.MethodGet {
		start, end := parseRange(r.Header.Get("Range"), st.Size())
		s.mu.Lock()
		cut := int64(-1)
		switch {
		case s.truncateAlways && strings.Contains(name, "-flat"):
			cut = start + (end-start)/2
		case s.dropOnceAfter >= 0 && !s.dropped && start <= s.dropOnceAfter && s.dropOnceAfter < end:
			s.dropped = true
			cut = s.dropOnceAfter
		}
		bps := s.bytesPerSec
		s.mu.Unlock()
		body = &faultReader{rs: f, cutAt: cut, bps: bps, link: &s.link, counter: &s.served}
	}
	http.ServeContent(w, r, name, st.ModTime(), body)
}

// serveNFC streams a file like an HttpNfcLease device URL: chunked, no Content-Length,
// no Range support.
func (s *diskServer) serveNFC(w http.ResponseWriter, r *http.Request) {
	f, err := os.Open(filepath.Join(s.dir, filepath.Base(strings.TrimPrefix(r.URL.Path, "/nfc/"))))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	s.mu.Lock()
	bps, cut := s.bytesPerSec, s.nfcDropAfter
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-vnd.vmware-streamVmdk")
	w.WriteHeader(http.StatusOK)
	fr := &faultReader{rs: f, cutAt: cut, bps: bps, link: &s.link, counter: &s.served}
	buf := make([]byte, 32<<10)
	for {
		n, err := fr.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			w.(http.Flusher).Flush() // forces chunked encoding, as ESXi does
		}
		if err != nil {
			return
		}
	}
}

func parseRange(h string, size int64) (int64, int64) {
	start, end := int64(0), size
	if v, ok := strings.CutPrefix(h, "bytes="); ok {
		a, b, _ := strings.Cut(v, "-")
		if n, err := strconv.ParseInt(a, 10, 64); err == nil {
			start = n
		}
		if n, err := strconv.ParseInt(b, 10, 64); err == nil {
			end = n + 1
		}
	}
	return start, end
}

// faultReader wraps the served file: it counts bytes, throttles, and at cutAt (an absolute
// file offset) aborts the connection.
type faultReader struct {
	rs      io.ReadSeeker
	pos     int64
	cutAt   int64
	bps     int64
	link    *linkThrottle
	counter *atomic.Int64
}

// linkThrottle paces every body of a server together: a byte may leave once the link has
// had time to carry every byte before it.
type linkThrottle struct {
	mu      sync.Mutex
	started time.Time
	sent    int64
}

// due reserves n bytes and returns when they may be sent.
func (l *linkThrottle) due(n, bps int64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.started.IsZero() || now.Sub(l.started) > time.Duration(float64(l.sent)/float64(bps)*float64(time.Second))+time.Second {
		// Idle for a while: the link does not bank unused capacity for more than a second.
		l.started, l.sent = now, 0
	}
	at := l.started.Add(time.Duration(float64(l.sent) / float64(bps) * float64(time.Second)))
	l.sent += n
	return at
}

func (f *faultReader) Seek(off int64, whence int) (int64, error) {
	n, err := f.rs.Seek(off, whence)
	f.pos = n
	return n, err
}

func (f *faultReader) Read(p []byte) (int, error) {
	if f.cutAt >= 0 && f.pos >= f.cutAt {
		panic(http.ErrAbortHandler) // drops the connection mid-body
	}
	if f.cutAt >= 0 && f.pos+int64(len(p)) > f.cutAt {
		p = p[:f.cutAt-f.pos]
	}
	if f.bps > 0 {
		if len(p) > 16<<10 {
			p = p[:16<<10]
		}
		// Throttle: do not get ahead of bps. This runs in the server, not the code under
		// test; sleeping is the simplest rate limiter.
		time.Sleep(time.Until(f.link.due(int64(len(p)), f.bps)))
	}
	n, err := f.rs.Read(p)
	f.pos += int64(n)
	f.counter.Add(int64(n))
	return n, err
}

// setup makes dir with a flat disk "disk1-flat.vmdk" of size bytes (half random) and its
// descriptor "disk1.vmdk", served by a diskServer.
func setupFlat(t testing.TB, size int64) (*diskServer, string) {
	t.Helper()
	dir := t.TempDir()
	flat := filepath.Join(dir, "disk1-flat.vmdk")
	makeFlatDisk(t, flat, size, 0.5)
	if err := os.WriteFile(filepath.Join(dir, "disk1.vmdk"), []byte(descriptorText("disk1-flat.vmdk", size/512)), 0o644); err != nil {
		t.Fatal(err)
	}
	return newDiskServer(t, dir), flat
}

func cookieHeader() http.Header {
	h := http.Header{}
	h.Set("Cookie", testCookie)
	return h
}

func caFile(t testing.TB, srv *httptest.Server) string {
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// imagesIdentical runs qemu-img compare (which treats holes and zeros as equal).
func imagesIdentical(t testing.TB, flat, img, format string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", format, flat, img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v: %s", flat, img, err, out)
	}
}

func imageFormat(t testing.TB, path string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info: %v: %s", err, out)
	}
	for _, f := range []string{"qcow2", "raw"} {
		if bytes.Contains(out, []byte(`"format": "`+f+`"`)) {
			return f
		}
	}
	t.Fatalf("unknown format: %s", out)
	return ""
}

// progressLog records callbacks with their time.
type progressLog struct {
	mu      sync.Mutex
	updates []proto.Progress
	times   []time.Time
}

func (p *progressLog) fn(pr proto.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.updates = append(p.updates, pr)
	p.times = append(p.times, time.Now())
}

func (p *progressLog) snapshot() ([]proto.Progress, []time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]proto.Progress(nil), p.updates...), append([]time.Time(nil), p.times...)
}

// check asserts the callback contract: ≤ 1 per interval except the final one, monotonic,
// ends at 100% with current == total.
func (p *progressLog) check(t testing.TB, total int64) {
	t.Helper()
	ups, times := p.snapshot()
	if len(ups) == 0 {
		t.Fatal("no progress callbacks")
	}
	for i := 1; i < len(ups); i++ {
		if ups[i].CurrentBytes < ups[i-1].CurrentBytes || ups[i].PercentComplete < ups[i-1].PercentComplete {
			t.Errorf("progress went backwards: %+v then %+v", ups[i-1], ups[i])
		}
		// All but the final update are at least a second apart (a little slack for the
		// clock read inside the tracker vs here).
		if i < len(ups)-1 && times[i].Sub(times[i-1]) < 990*time.Millisecond {
			t.Errorf("updates %d and %d only %s apart", i-1, i, times[i].Sub(times[i-1]))
		}
	}
	last := ups[len(ups)-1]
	if last.PercentComplete != 100 || last.CurrentBytes != total || last.TotalBytes != total || last.Stage != proto.StageConversion {
		t.Errorf("final progress = %+v, want 100%% of %d", last, total)
	}
}

// childrenMentioning lists processes whose command line contains s (our tools always name
// their private dir or output path), excluding this test process.
func childrenMentioning(s string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, []byte(s)) {
			found = append(found, fmt.Sprintf("%d: %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		}
	}
	return found
}

// waitNoProcesses polls until no process mentions s.
func waitNoProcesses(t testing.TB, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := childrenMentioning(s)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left behind: %v", left)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, bounded by the deadline above
	}
}

func testTransferer(t testing.TB, tmp string) *Transferer {
	return New(Config{Logger: testLogger(t), Retries: 2, RetryDelay: time.Second, TempDir: tmp})
}

func withTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
