package fleet

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hypersdk/hypersdk/proto"
)

// Per-agent gauges, computed at scrape time from the view: an agent that vanished from the
// view leaves no stale series behind, which a GaugeVec set on events would.
var (
	descUp = prometheus.NewDesc("hypersdk_agent_up",
		"1 while the agent is in the gossip pool (alive or suspect), 0 while listed dead; an agent that left cleanly is not reported", []string{"agent"}, nil)
	descHealthy = prometheus.NewDesc("hypersdk_agent_healthy",
		"1 while the agent's self-checks pass (libvirt, storage, qemu-img, controllers), 0 while one fails; members only", []string{"agent"}, nil)
	descCPUs = prometheus.NewDesc("hypersdk_agent_cpus",
		"CPUs of the agent's host", []string{"agent"}, nil)
	descMemTotal = prometheus.NewDesc("hypersdk_agent_memory_total_bytes",
		"Memory of the agent's host", []string{"agent"}, nil)
	descMemFree = prometheus.NewDesc("hypersdk_agent_memory_free_bytes",
		"Available memory of the agent's host (MemAvailable, rounded down)", []string{"agent"}, nil)
	descStorageFree = prometheus.NewDesc("hypersdk_agent_storage_free_bytes",
		"Free bytes in the agent's storage dir (rounded down)", []string{"agent"}, nil)
	descRunning = prometheus.NewDesc("hypersdk_agent_running_jobs",
		"Jobs running on the agent", []string{"agent"}, nil)
	descMaxJobs = prometheus.NewDesc("hypersdk_agent_max_jobs",
		"Job slots of the agent", []string{"agent"}, nil)
)

// Describe implements prometheus.Collector.
func (f *Fleet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descHealthy, descCPUs, descMemTotal, descMemFree, descStorageFree, descRunning, descMaxJobs} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A dead or left agent reports only up 0: its
// last capacity would read as a host that still has room.
func (f *Fleet) Collect(ch chan<- prometheus.Metric) {
	for _, a := range f.List() {
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, a.Name)
		}
		if a.State == proto.AgentLeft {
			continue // it said goodbye: no alert for a host taken out on purpose
		}
		if !a.State.Member() {
			gauge(descUp, 0)
			continue
		}
		gauge(descUp, 1)
		healthy := 1.0
		if len(a.Capacity.FailedChecks) > 0 {
			healthy = 0
		}
		gauge(descHealthy, healthy)
		gauge(descCPUs, float64(a.Capacity.CPUs))
		gauge(descMemTotal, float64(a.Capacity.MemoryTotalBytes))
		gauge(descMemFree, float64(a.Capacity.MemoryFreeBytes))
		gauge(descStorageFree, float64(a.Capacity.StorageFreeBytes))
		gauge(descRunning, float64(a.RunningJobs))
		gauge(descMaxJobs, float64(a.MaxJobs))
	}
}
