package vsphere

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// PowerState reads the VM's current power state.
func (c *Client) PowerState(ctx context.Context, vm *VM) (types.VirtualMachinePowerState, error) {
	st, err := vm.obj.PowerState(ctx)
	if err != nil {
		if isManagedObjectNotFound(err) {
			return "", fmt.Errorf("%w: %s (removed)", ErrVMNotFound, vm.Path)
		}
		return "", fmt.Errorf("vsphere: power state of %s: %w", vm.Path, err)
	}
	return st, nil
}

// Shutdown asks the guest OS to shut down (VMware Tools) and waits until the VM is powered
// off. A VM already off is a success. After timeout it returns ErrShutdownTimeout and leaves
// the VM as it is: powering off is the caller's decision (options.power_off).
func (c *Client) Shutdown(ctx context.Context, vm *VM, timeout time.Duration) error {
	st, err := c.PowerState(ctx, vm)
	if err != nil {
		return err
	}
	switch st {
	case types.VirtualMachinePowerStatePoweredOff:
		return nil
	case types.VirtualMachinePowerStateSuspended:
		return fmt.Errorf("vsphere: %s is suspended: a guest shutdown is impossible, power it off instead", vm.Path)
	}
	if err := vm.obj.ShutdownGuest(ctx); err != nil {
		if fault.Is(err, &types.InvalidPowerState{}) {
			// It powered off between our read and the call.
			if st, serr := c.PowerState(ctx, vm); serr == nil && st == types.VirtualMachinePowerStatePoweredOff {
				return nil
			}
		}
		return fmt.Errorf("vsphere: guest shutdown of %s (are VMware Tools running?): %w", vm.Path, err)
	}
	c.log.Info("guest shutdown requested", "vm", vm.Path, "timeout", timeout)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := vm.obj.WaitForPowerState(wctx, types.VirtualMachinePowerStatePoweredOff); err != nil {
		if ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: %s still powered on %s after the shutdown request", ErrShutdownTimeout, vm.Path, timeout)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("vsphere: wait for %s to power off: %w", vm.Path, err)
	}
	return nil
}

// PowerOff powers the VM off hard. A VM already off is a success.
func (c *Client) PowerOff(ctx context.Context, vm *VM) error {
	st, err := c.PowerState(ctx, vm)
	if err != nil {
		return err
	}
	if st == types.VirtualMachinePowerStatePoweredOff {
		return nil
	}
	task, err := vm.obj.PowerOff(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		if fault.Is(err, &types.InvalidPowerState{}) {
			if st, serr := c.PowerState(ctx, vm); serr == nil && st == types.VirtualMachinePowerStatePoweredOff {
				return nil
			}
		}
		return fmt.Errorf("vsphere: power off %s: %w", vm.Path, err)
	}
	c.log.Info("powered off", "vm", vm.Path)
	return nil
}

// RemoveCDROMs removes every CD-ROM device (and with it any mounted ISO) and returns how many
// it removed. A VM without one is a success with 0.
func (c *Client) RemoveCDROMs(ctx context.Context, vm *VM) (int, error) {
	devices, err := vm.obj.Device(ctx)
	if err != nil {
		return 0, fmt.Errorf("vsphere: devices of %s: %w", vm.Path, err)
	}
	cds := devices.SelectByType((*types.VirtualCdrom)(nil))
	if len(cds) == 0 {
		return 0, nil
	}
	if err := vm.obj.RemoveDevice(ctx, false, cds...); err != nil {
		return 0, fmt.Errorf("vsphere: remove CD-ROMs of %s: %w", vm.Path, err)
	}
	c.log.Info("removed CD-ROMs", "vm", vm.Path, "count", len(cds))
	return len(cds), nil
}

// Snapshot is a snapshot this client made.
type Snapshot struct {
	Name string
	Ref  types.ManagedObjectReference
}

// Moref is the snapshot's managed object id (VDDK's snapshot=).
func (s *Snapshot) Moref() string { return s.Ref.Value }

// CreateSnapshot takes a snapshot without memory and without quiescing (a crash-consistent
// point to read disks from).
func (c *Client) CreateSnapshot(ctx context.Context, vm *VM, name, description string) (*Snapshot, error) {
	task, err := vm.obj.CreateSnapshot(ctx, name, description, false, false)
	if err != nil {
		return nil, fmt.Errorf("vsphere: snapshot %s: %w", vm.Path, err)
	}
	res, err := task.WaitForResult(ctx)
	if err != nil {
		return nil, fmt.Errorf("vsphere: snapshot %s: %w", vm.Path, err)
	}
	ref, ok := res.Result.(types.ManagedObjectReference)
	if !ok {
		return nil, fmt.Errorf("vsphere: snapshot %s: the task returned %T, not a snapshot", vm.Path, res.Result)
	}
	c.log.Info("snapshot created", "vm", vm.Path, "snapshot", name, "moref", ref.Value)
	return &Snapshot{Name: name, Ref: ref}, nil
}

// RemoveSnapshot deletes the snapshot and consolidates its delta into the disks. A snapshot
// that no longer exists is a success, so cleanup can be retried.
func (c *Client) RemoveSnapshot(ctx context.Context, vm *VM, snap *Snapshot) error {
	consolidate := true
	res, err := methods.RemoveSnapshot_Task(ctx, c.vim, &types.RemoveSnapshot_Task{
		This:           snap.Ref,
		RemoveChildren: false,
		Consolidate:    &consolidate,
	})
	if err == nil {
		err = taskWait(ctx, c, res.Returnval)
	}
	if err != nil {
		if isManagedObjectNotFound(err) {
			return nil
		}
		return fmt.Errorf("vsphere: remove snapshot %q of %s: %w", snap.Name, vm.Path, err)
	}
	c.log.Info("snapshot removed", "vm", vm.Path, "snapshot", snap.Name)
	return nil
}

func isManagedObjectNotFound(err error) bool {
	return fault.Is(err, &types.ManagedObjectNotFound{})
}
