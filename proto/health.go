package proto

// An agent's self-checks: what it needs to run a migration, checked before it asks for
// work and again every little while. A failed check keeps jobs away from the host
// (placement) and makes the agent's /health answer 503, so a host with a broken libvirt
// no longer leases a job, copies every disk and fails at define (issue 17).

// Health check names (AgentCapacity.FailedChecks). Append-only: their order is the bit
// order of the gossip metadata.
const (
	HealthCheckLibvirt     = "libvirt"
	HealthCheckStorage     = "storage_writable"
	HealthCheckStorageRoom = "storage_room"
	HealthCheckQemuImg     = "qemu_img"
	HealthCheckControllers = "controllers"
)

// healthChecks is every check with the reason a controller shows for it when all it has
// is the gossip metadata (the agent's own /health and lease requests carry the precise
// reason). The advice names what exists on a packaged host.
var healthChecks = []struct{ name, reason string }{
	{HealthCheckLibvirt, "libvirt is not reachable (start it: systemctl start libvirtd)"},
	{HealthCheckStorage, "the storage dir is not writable (check its owner and mount)"},
	{HealthCheckStorageRoom, "the storage dir has too little free space"},
	{HealthCheckQemuImg, "qemu-img is not installed (install qemu-utils or qemu-img)"},
	{HealthCheckControllers, "no controller answers the agent (check controllers in its config)"},
}

// HealthChecks names every check, in order.
func HealthChecks() []string {
	out := make([]string, len(healthChecks))
	for i, c := range healthChecks {
		out[i] = c.name
	}
	return out
}

// HealthReason is the generic reason for a failed check ("" for an unknown name).
func HealthReason(check string) string {
	for _, c := range healthChecks {
		if c.name == check {
			return c.reason
		}
	}
	return ""
}

func healthBits(failed []string) uint64 {
	var bits uint64
	for i, c := range healthChecks {
		for _, f := range failed {
			if f == c.name {
				bits |= 1 << i
			}
		}
	}
	return bits
}

func checksFromBits(bits uint64) (failed, reasons []string) {
	for i, c := range healthChecks {
		if bits&(1<<i) != 0 {
			failed = append(failed, c.name)
			reasons = append(reasons, c.reason)
		}
	}
	return failed, reasons
}
