package capacity

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// checkHealth fills c's verdict from what the probe found: libvirt reachable, the storage
// dir writable with at least MinFreeStorage free, qemu-img installed, a controller
// answering. Each reason says what to do on a packaged host (no repository scripts
// there). The write test is cached like libvirt's ping; the rest is already measured.
func (p *Prober) checkHealth(c *proto.AgentCapacity, caps proto.AgentCapabilities, capErr error) {
	fail := func(check, reason string) {
		c.FailedChecks = append(c.FailedChecks, check)
		c.Reasons = append(c.Reasons, reason)
	}
	p.mu.Lock()
	libvirtErr := p.libvirtErr
	if p.writableAt.IsZero() || time.Since(p.writableAt) >= p.cfg.LibvirtTTL {
		p.writable, p.writableAt = writeTest(p.cfg.StorageDir), time.Now()
	}
	writable := p.writable
	p.mu.Unlock()

	if !caps.LibvirtReachable {
		detail := ""
		if libvirtErr != nil {
			detail = ": " + oneLine(libvirtErr.Error())
		}
		fail(proto.HealthCheckLibvirt, fmt.Sprintf("libvirt at %s is not reachable%s (start it: systemctl start libvirtd)", p.cfg.LibvirtURI, detail))
	}
	switch {
	case errors.Is(capErr, ErrStorageDir):
		fail(proto.HealthCheckStorage, fmt.Sprintf("storage dir %s: %v", p.cfg.StorageDir, capErr))
	case writable != nil:
		fail(proto.HealthCheckStorage, fmt.Sprintf("storage dir %s is not writable: %v (check its owner and mount)", p.cfg.StorageDir, writable))
	}
	if capErr == nil && c.StorageFreeBytes < p.cfg.MinFreeStorage {
		fail(proto.HealthCheckStorageRoom, fmt.Sprintf("storage dir %s has %d MiB free, below the %d MiB an agent needs to take work",
			p.cfg.StorageDir, c.StorageFreeBytes>>20, p.cfg.MinFreeStorage>>20))
	}
	if !caps.QemuImg {
		fail(proto.HealthCheckQemuImg, "qemu-img is not installed (install the qemu-utils or qemu-img package)")
	}
	if p.cfg.Controllers != nil {
		if err := p.cfg.Controllers(); err != nil {
			fail(proto.HealthCheckControllers, fmt.Sprintf("no controller answers: %v (check controllers in the agent's config)", err))
		}
	}
	c.Healthy = len(c.FailedChecks) == 0

	// Log changes of the verdict only: an unhealthy host would otherwise log every probe.
	now := strings.Join(c.FailedChecks, ",")
	p.mu.Lock()
	was := p.unhealthy
	p.unhealthy = now
	p.mu.Unlock()
	switch {
	case now != "" && now != was:
		p.cfg.Logger.Warn("agent unhealthy: no new work until fixed", "failed_checks", now, "reasons", c.Reasons)
	case now == "" && was != "":
		p.cfg.Logger.Info("agent healthy again", "was_failing", was)
	}
}

// writeTest creates, writes, syncs and removes a small file in dir: a read-only mount, a
// full filesystem or a wrong owner show here, not after a whole disk was copied.
func writeTest(dir string) error {
	f, err := os.CreateTemp(dir, ".hypersdk-health-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.Write([]byte("ok\n"))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	return err
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}
