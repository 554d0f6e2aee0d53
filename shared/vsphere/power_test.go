package vsphere_test

import (
	"errors"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/hypersdk/hypersdk/shared/vcsim"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// errAny stands for "some error" in tables.
var errAny = errors.New("any error")

func TestShutdownAndPowerOff(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{VMs: 4, PowerOn: true})
	if err := s.SetGuestIgnoresShutdown("vm-2", true); err != nil {
		t.Fatal(err)
	}
	c := connect(t, s)
	ctx := testCtx(t)
	off := findVM(t, c, "DC0/vm/vm-3")
	if err := c.PowerOff(ctx, off); err != nil {
		t.Fatal(err)
	}
	suspended := findVM(t, c, "DC0/vm/vm-4")
	if task, err := suspended.Object().Suspend(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatalf("suspend: %v", err)
	}

	tests := []struct {
		name      string
		vm        string
		timeout   time.Duration
		wantErr   error
		wantState types.VirtualMachinePowerState
	}{
		{"guest shuts down", "vm-1", 10 * time.Second, nil, types.VirtualMachinePowerStatePoweredOff},
		{"guest ignores the request", "vm-2", 300 * time.Millisecond, vsphere.ErrShutdownTimeout, types.VirtualMachinePowerStatePoweredOn},
		{"already off", "vm-3", time.Second, nil, types.VirtualMachinePowerStatePoweredOff},
		{"suspended", "vm-4", time.Second, errAny, types.VirtualMachinePowerStateSuspended},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			vm := findVM(t, c, "DC0/vm/"+tc.vm)
			start := time.Now()
			err := c.Shutdown(ctx, vm, tc.timeout)
			if tc.wantErr == errAny {
				if err == nil {
					t.Fatal("Shutdown succeeded")
				}
			} else if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Shutdown = %v, want %v", err, tc.wantErr)
			}
			if errors.Is(tc.wantErr, vsphere.ErrShutdownTimeout) && time.Since(start) < tc.timeout {
				t.Errorf("timed out after %s, before the %s timeout", time.Since(start), tc.timeout)
			}
			if st, err := c.PowerState(ctx, vm); err != nil || st != tc.wantState {
				t.Errorf("power state %s, %v; want %s", st, err, tc.wantState)
			}
		})
	}

	// What the pipeline does after a shutdown timeout with options.power_off: power off hard;
	// a second power off is a no-op.
	hung := findVM(t, c, "DC0/vm/vm-2")
	for i := 0; i < 2; i++ {
		if err := c.PowerOff(ctx, hung); err != nil {
			t.Fatalf("PowerOff #%d: %v", i+1, err)
		}
	}
	if st, _ := c.PowerState(ctx, hung); st != types.VirtualMachinePowerStatePoweredOff {
		t.Errorf("after PowerOff: %s", st)
	}
}

func TestRemoveCDROMs(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{})
	c := connect(t, s)
	ctx := testCtx(t)
	vm := findVM(t, c, "DC0/vm/vm-1")
	for i, want := range []int{1, 0} {
		n, err := c.RemoveCDROMs(ctx, vm)
		if err != nil || n != want {
			t.Fatalf("RemoveCDROMs #%d = %d, %v; want %d", i+1, n, err, want)
		}
	}
	devices, err := vm.Object().Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cds := devices.SelectByType((*types.VirtualCdrom)(nil)); len(cds) != 0 {
		t.Errorf("%d CD-ROMs left", len(cds))
	}
	info, err := c.VMInfo(ctx, vm)
	if err != nil || len(info.Disks) != 1 || len(info.NICs) != 1 {
		t.Errorf("other devices changed: %+v, %v", info, err)
	}
}

func TestSnapshots(t *testing.T) {
	t.Parallel()
	s := startSim(t, vcsim.Config{})
	c := connect(t, s)
	ctx := testCtx(t)
	vm := findVM(t, c, "DC0/vm/vm-1")

	snap, err := c.CreateSnapshot(ctx, vm, "hypersdk-job-1", "migration read point")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Moref() == "" || snap.Name != "hypersdk-job-1" {
		t.Errorf("snapshot %+v", snap)
	}
	hasSnapshots := func() bool {
		info, err := c.VMInfo(ctx, vm)
		if err != nil {
			t.Fatal(err)
		}
		return info.HasSnapshots
	}
	if !hasSnapshots() {
		t.Fatal("VM shows no snapshot after CreateSnapshot")
	}
	for i := 0; i < 2; i++ { // the second removal finds nothing: cleanup is idempotent
		if err := c.RemoveSnapshot(ctx, vm, snap); err != nil {
			t.Fatalf("RemoveSnapshot #%d: %v", i+1, err)
		}
	}
	if hasSnapshots() {
		t.Error("VM still has a snapshot")
	}
}
