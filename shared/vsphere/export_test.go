package vsphere_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// TestExportVM downloads every disk of an export lease with the client's own transport and
// header and checks it is a stream-optimized VMDK of the flat extent's content.
func TestExportVM(t *testing.T) {
	t.Parallel()
	requireQemuImg(t)
	tests := []struct {
		name string
		star bool // the server reports device URLs with host "*", as ESXi does
	}{
		{"vCenter URLs", false},
		{"ESXi star host", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startSim(t, vcsim.Config{VMs: 2, DisksPerVM: 2, LeaseHostStar: tc.star,
				Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})
			c := connect(t, s)
			ctx := testCtx(t)
			vm := findVM(t, c, "DC0/vm/vm-1")

			exp, err := c.ExportVM(ctx, vm)
			if err != nil {
				t.Fatal(err)
			}
			defer exp.Abort(ctx, errors.New("test ended"))
			if len(exp.Devices) != 2 || exp.TotalDiskCapacityBytes != 2*2*mib {
				t.Fatalf("%d devices, %d bytes total; want 2 disks of 2 MiB", len(exp.Devices), exp.TotalDiskCapacityBytes)
			}
			client := &http.Client{Transport: c.HTTPTransport()}
			for i, d := range exp.Devices {
				u, err := url.Parse(d.URL)
				if err != nil || u.Host != s.URL.Host || !u.IsAbs() {
					t.Fatalf("device URL %q: want absolute on %s", d.URL, s.URL.Host)
				}
				if !d.Disk || d.TargetID == "" || d.Key == "" {
					t.Errorf("device %+v", d)
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.URL, nil)
				req.Header = exp.Header.Clone()
				res, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(t.TempDir(), d.TargetID)
				f, _ := os.Create(out)
				n, err := io.Copy(f, res.Body)
				res.Body.Close()
				f.Close()
				if err != nil || res.StatusCode != http.StatusOK {
					t.Fatalf("download %s: %s, %v", d.URL, res.Status, err)
				}
				exp.Progress(i, 100)
				exp.DeviceDone(i)
				exp.Progress(i, 100) // after done: ignored, must not panic
				if d.Size != 0 && n != d.Size {
					t.Errorf("downloaded %d bytes, lease said %d", n, d.Size)
				}
				cmp := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "vmdk", s.VMs[0].Disks[i].FlatPath, out)
				if msg, err := cmp.CombinedOutput(); err != nil {
					t.Errorf("disk %d differs from its flat extent: %v %s", i, err, msg)
				}
			}
			if err := exp.Complete(ctx); err != nil {
				t.Fatal(err)
			}
			if err := exp.Abort(ctx, nil); err != nil {
				t.Errorf("Abort after Complete: %v", err)
			}
			res, err := client.Get(exp.Devices[0].URL)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusNotFound {
				t.Errorf("device URL after Complete: %s", res.Status)
			}
		})
	}
}

func TestExportVMRefusesRunningVM(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{PowerOn: true})
	c := connect(t, s)
	if _, err := c.ExportVM(testCtx(t), findVM(t, c, "DC0/vm/vm-1")); err == nil {
		t.Fatal("export of a powered-on VM succeeded")
	}
}

// TestExportKeepAlive: the lease outlives its timeout because the keep-alive reports progress.
func TestExportKeepAlive(t *testing.T) {
	t.Parallel()
	requireQemuImg(t)
	if testing.Short() {
		t.Skip("waits past a 3 s lease timeout")
	}
	const leaseTimeout = 3 * time.Second
	s := startSim(t, vcsim.Config{LeaseTimeout: leaseTimeout})
	c := connect(t, s)
	ctx := testCtx(t)
	exp, err := c.ExportVM(ctx, findVM(t, c, "DC0/vm/vm-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Abort(ctx, nil)
	client := &http.Client{Transport: c.HTTPTransport()}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(leaseTimeout + 1500*time.Millisecond); time.Now().Before(end); <-tick.C {
		res, err := client.Head(exp.Devices[0].URL)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("lease ended after %s despite the keep-alive: %s", leaseTimeout, res.Status)
		}
	}
	if err := exp.Complete(ctx); err != nil {
		t.Fatalf("Complete after the timeout window: %v", err)
	}
}

func TestDatastoreFileURL(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{Fill: vcsim.Fill{Mode: vcsim.FillRandom, Fraction: 0.5}})
	c := connect(t, s)
	scoped := connect(t, s, func(c *vsphere.Config) { c.Datacenter = "DC0" })
	flat := s.VMs[0].Disks[0].FlatPath
	want, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		client    *vsphere.Client
		ds, path  string
		wantBytes []byte
		wantErr   error
	}{
		{"datastore and path", c, "LocalDS_0", "vm-1/vm-1-flat.vmdk", want[1000:3000], nil},
		{"datacenter configured", scoped, "LocalDS_0", "/vm-1/vm-1-flat.vmdk", want[1000:3000], nil},
		{"datastore path of the descriptor", c, "[LocalDS_0] vm-1/vm-1.vmdk", "", nil, nil},
		{"unknown datastore", c, "NoSuchDS", "x.vmdk", nil, vsphere.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, header, err := tc.client.DatastoreFileURL(testCtx(t), tc.ds, tc.path)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if q := u.Query(); q.Get("dcPath") != "DC0" || q.Get("dsName") != "LocalDS_0" || u.Host != s.URL.Host {
				t.Errorf("URL %s", u)
			}
			req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
			req.Header = header
			if tc.wantBytes != nil {
				req.Header.Set("Range", "bytes=1000-2999")
			}
			res, err := (&http.Client{Transport: tc.client.HTTPTransport()}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if tc.wantBytes == nil {
				if !bytes.Contains(body, []byte(`createType="vmfs"`)) {
					t.Errorf("descriptor URL served %q", body)
				}
				return
			}
			if res.StatusCode != http.StatusPartialContent || !bytes.Equal(body, tc.wantBytes) {
				t.Errorf("ranged read: %s, %d bytes, equal %v", res.Status, len(body), bytes.Equal(body, tc.wantBytes))
			}
		})
	}
}
