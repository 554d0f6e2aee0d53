package vsphere

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"github.com/vmware/govmomi/nfc"
	"github.com/vmware/govmomi/vim25/types"
)

// Export is an open ExportVm lease (HttpNfcLease). While it is open a keep-alive goroutine
// reports progress to the server every few seconds; without it ESXi ends the lease after
// its timeout (5 minutes) and the downloads break. Always end it with Complete or Abort.
type Export struct {
	// Devices are the files to download, disks first in device order.
	Devices []ExportDevice
	// Header carries the session cookie for the device URLs. A secret: never log it.
	Header http.Header
	// TotalDiskCapacityBytes is the sum of the disks' capacities.
	TotalDiskCapacityBytes int64

	lease   *nfc.Lease
	updater *nfc.LeaseUpdater
	items   []nfc.FileItem

	mu      sync.Mutex
	stopped chan struct{} // closed when the keep-alive stops: progress sends give up
	last    []float32     // last percent reported per device
	done    []bool        // device finished: its progress channel is closed
	ended   bool
}

// ExportDevice is one file of an export lease.
type ExportDevice struct {
	// Key identifies the device, e.g. "/vm-42/VirtualLsiLogicController0:0".
	Key string
	// TargetID is the file name the server suggests, e.g. "disk-0.vmdk".
	TargetID string
	// URL is absolute: a "*" host (ESXi) is replaced by the host this client connected to.
	URL string
	// Disk is true for disks (stream-optimized VMDKs).
	Disk bool
	// Size is the file size in bytes when the server reports it, else 0.
	Size int64
	// SSLThumbprint is the SHA-1 thumbprint of the host serving URL, when the server
	// reports it. Through vCenter the URL is usually on an ESXi host with its own
	// certificate: pin this, not the vCenter's.
	SSLThumbprint string
}

// ExportVM opens an export lease on a powered-off VM and waits until it is ready. A host
// that refuses for lack of NFC resources (busy.go) is asked again, with back-off.
func (c *Client) ExportVM(ctx context.Context, vm *VM) (*Export, error) {
	return retryBusy(ctx, c, vm.Path, func() (*Export, error) { return c.exportVM(ctx, vm) })
}

func (c *Client) exportVM(ctx context.Context, vm *VM) (*Export, error) {
	lease, err := vm.obj.Export(ctx)
	if err != nil {
		return nil, fmt.Errorf("vsphere: export %s (the VM must be powered off): %w", vm.Path, err)
	}
	info, err := lease.Wait(ctx, nil)
	if err != nil {
		// The lease may still be initializing on the server: release it.
		_ = lease.Abort(context.WithoutCancel(ctx), nil)
		return nil, fmt.Errorf("vsphere: export lease of %s: %w", vm.Path, err)
	}
	e := &Export{
		Header:                 c.SessionHeader(),
		TotalDiskCapacityBytes: info.TotalDiskCapacityInKB * 1024,
		lease:                  lease,
		items:                  info.Items,
		stopped:                make(chan struct{}),
	}
	// lease.Wait made one item per device URL, in order, with the "*" host fixed.
	for i, item := range info.Items {
		d := info.DeviceUrl[i]
		e.Devices = append(e.Devices, ExportDevice{
			Key:           d.Key,
			TargetID:      item.Path,
			URL:           item.URL.String(),
			Disk:          d.Disk != nil && *d.Disk,
			Size:          d.FileSize,
			SSLThumbprint: d.SslThumbprint,
		})
	}
	e.last = make([]float32, len(e.items))
	e.done = make([]bool, len(e.items))
	e.updater = lease.StartUpdater(context.WithoutCancel(ctx), info)
	c.log.Info("export lease ready", "vm", vm.Path, "devices", len(e.Devices))
	return e, nil
}

// progressReport is a progress.Report for the lease updater.
type progressReport struct{ pct float32 }

func (r progressReport) Percentage() float32 { return r.pct }
func (r progressReport) Detail() string      { return "" }
func (r progressReport) Error() error        { return nil }

// Progress tells the keep-alive how far the download of device i is (0–100); the server sees
// the lease's overall percent. Cheap to call often: only whole-percent changes are sent.
func (e *Export) Progress(i int, percent float32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if i < 0 || i >= len(e.items) || e.done[i] || e.ended || percent < e.last[i]+1 {
		return
	}
	e.last[i] = percent
	select {
	case e.items[i].Sink() <- progressReport{pct: min(percent, 100)}:
	case <-e.stopped:
	}
}

// DeviceDone marks device i as fully downloaded.
func (e *Export) DeviceDone(i int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if i < 0 || i >= len(e.items) || e.done[i] || e.ended {
		return
	}
	e.done[i] = true
	close(e.items[i].Sink())
}

// stop ends the keep-alive once; it reports whether this call did.
func (e *Export) stop() bool {
	e.mu.Lock()
	if e.ended {
		e.mu.Unlock()
		return false
	}
	e.ended = true
	close(e.stopped)
	e.mu.Unlock()
	e.updater.Done()
	return true
}

// Complete ends a successful export: the server releases the VM.
func (e *Export) Complete(ctx context.Context) error {
	if !e.stop() {
		return nil
	}
	if err := e.lease.Complete(ctx); err != nil {
		return fmt.Errorf("vsphere: complete export lease: %w", err)
	}
	return nil
}

// Abort ends a failed or cancelled export; cause (may be nil) is shown in vSphere's tasks.
// Safe to call after Complete (then it does nothing), so it can be deferred.
func (e *Export) Abort(ctx context.Context, cause error) error {
	if !e.stop() {
		return nil
	}
	var f *types.LocalizedMethodFault
	if cause != nil {
		f = &types.LocalizedMethodFault{Fault: &types.SystemError{Reason: cause.Error()}, LocalizedMessage: cause.Error()}
	}
	if err := e.lease.Abort(ctx, f); err != nil {
		return fmt.Errorf("vsphere: abort export lease: %w", err)
	}
	return nil
}
