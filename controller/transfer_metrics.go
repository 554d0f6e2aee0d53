package controller

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
)

// Migration throughput as the replicated state knows it: what the agents report in their
// progress (at most once a second per job). Every controller applies every progress entry,
// so every controller reports the same values: aggregate with max by (agent), not sum.
var (
	descTransferRate = prometheus.NewDesc("hypersdk_jobs_transfer_bytes_per_second",
		"Sum of the transfer rates reported by the running jobs of each agent", []string{"agent"}, nil)
	descTransferBytes = prometheus.NewDesc("hypersdk_jobs_transferred_bytes",
		"Bytes transferred so far by the running jobs of each agent", []string{"agent"}, nil)
	descTransferTotal = prometheus.NewDesc("hypersdk_jobs_transfer_total_bytes",
		"Bytes to transfer by the running jobs of each agent, once they know their size", []string{"agent"}, nil)
)

// transferCollector computes the throughput gauges at scrape time from the running jobs
// (O(running jobs), read-locked): no bookkeeping in apply.
type transferCollector struct{ st *state.State }

func (c transferCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descTransferRate
	ch <- descTransferBytes
	ch <- descTransferTotal
}

func (c transferCollector) Collect(ch chan<- prometheus.Metric) {
	type sums struct{ rate, done, total float64 }
	by := map[string]*sums{}
	c.st.Jobs(proto.StatusRunning, func(j *proto.Job) bool {
		if j.Agent == "" {
			return true
		}
		s := by[j.Agent]
		if s == nil {
			s = &sums{}
			by[j.Agent] = s
		}
		s.rate += max(j.Progress.BytesPerSecond, 0)
		s.done += float64(max(j.Progress.CurrentBytes, 0))
		s.total += float64(max(j.Progress.TotalBytes, 0))
		return true
	})
	for agent, s := range by {
		ch <- prometheus.MustNewConstMetric(descTransferRate, prometheus.GaugeValue, s.rate, agent)
		ch <- prometheus.MustNewConstMetric(descTransferBytes, prometheus.GaugeValue, s.done, agent)
		ch <- prometheus.MustNewConstMetric(descTransferTotal, prometheus.GaugeValue, s.total, agent)
	}
}
