package libvirt

import (
	"context"
	"fmt"
	"time"

	lv "libvirt.org/go/libvirt"
)

// StartWithConsole starts the defined domain name with its serial console attached from the
// guest's first byte (see Console). The caller closes the Console; the domain keeps running.
func StartWithConsole(ctx context.Context, conn *lv.Connect, name string) (*Console, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		return nil, fmt.Errorf("looking up domain %q: %s", name, lvMessage(err))
	}
	defer dom.Free()
	_, c, err := startWatched(conn, func(flags lv.DomainCreateFlags) (*lv.Domain, error) {
		if err := dom.CreateWithFlags(flags); err != nil {
			return nil, err
		}
		return dom, nil
	})
	if err != nil {
		if active, _ := dom.IsActive(); active {
			_ = dom.Destroy()
		}
		return nil, fmt.Errorf("starting domain %q: %s", name, lvMessage(err))
	}
	return c, nil
}

// Shutdown asks the guest to power off (ACPI) and waits up to timeout for it, then powers
// the domain off. It reports whether the guest shut down by itself. A domain that is not
// running is not an error.
func Shutdown(ctx context.Context, conn *lv.Connect, name string, timeout time.Duration) (graceful bool, err error) {
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		return false, fmt.Errorf("looking up domain %q: %s", name, lvMessage(err))
	}
	defer dom.Free()
	if active, _ := dom.IsActive(); !active {
		return true, nil
	}
	if err := dom.Shutdown(); err == nil {
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
	wait:
		for {
			if active, err := dom.IsActive(); err == nil && !active {
				return true, nil
			}
			select {
			case <-tick.C:
			case <-deadline.C:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
	}
	if err := dom.Destroy(); err != nil && !isCode(err, lv.ERR_OPERATION_INVALID) {
		return false, fmt.Errorf("powering off domain %q: %s", name, lvMessage(err))
	}
	return false, nil
}

// Stop powers the domain off at once (no guest shutdown). Not running is not an error.
func Stop(conn *lv.Connect, name string) error {
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		return fmt.Errorf("looking up domain %q: %s", name, lvMessage(err))
	}
	defer dom.Free()
	if active, _ := dom.IsActive(); !active {
		return nil
	}
	if err := dom.Destroy(); err != nil && !isCode(err, lv.ERR_OPERATION_INVALID) {
		return fmt.Errorf("powering off domain %q: %s", name, lvMessage(err))
	}
	return nil
}
