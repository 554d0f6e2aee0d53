package migrate

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's transfer series. The rate gauge carries the job id: an agent
// runs a handful of jobs at a time and the series is deleted when the job ends, so the
// cardinality stays bounded by max_jobs.
type metrics struct {
	bytes *prometheus.CounterVec
	rate  *prometheus.GaugeVec
	jobs  *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypersdk_agent_transfer_bytes_total",
			Help: "Disk bytes copied from vSphere into local images, by transfer method",
		}, []string{"method"}),
		rate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hypersdk_agent_transfer_bytes_per_second",
			Help: "Current transfer rate of each running job (over the last seconds)",
		}, []string{"job"}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypersdk_agent_migrations_total",
			Help: "Migrations run by this agent's pipeline, by method and result",
		}, []string{"method", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	// A second pipeline on the same registry (tests) shares the first one's series.
	register := func(c prometheus.Collector) (prometheus.Collector, error) {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return are.ExistingCollector, nil
			}
			return nil, err
		}
		return c, nil
	}
	c, err := register(m.bytes)
	if err != nil {
		return nil, err
	}
	m.bytes = c.(*prometheus.CounterVec)
	if c, err = register(m.rate); err != nil {
		return nil, err
	}
	m.rate = c.(*prometheus.GaugeVec)
	if c, err = register(m.jobs); err != nil {
		return nil, err
	}
	m.jobs = c.(*prometheus.CounterVec)
	return m, nil
}
