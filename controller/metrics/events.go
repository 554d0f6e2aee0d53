package metrics

import "github.com/prometheus/client_golang/prometheus"

// EventsSource is what the schedule, webhook and WebSocket collectors read at scrape time.
// The delivery and run counters are replicated (every controller reports the same
// cluster-wide totals, and they survive failover): aggregate them with max(), not sum().
type EventsSource interface {
	WebhookDeliveryCounters() (success, failure, dropped uint64)
	ScheduleRunCounters() (triggered, successful, failed uint64)
	// WSClients is this controller's connected WebSocket clients.
	WSClients() int
	// LeaseCounters: leases expired and attempts requeued so far; cluster-wide.
	LeaseCounters() (expiries, requeues uint64)
}

var (
	descWebhookDeliveries = prometheus.NewDesc("hypersdk_webhook_deliveries_total",
		"Webhook deliveries by result: success, failure (retries exhausted), dropped (outbox full or webhook deleted); cluster-wide", []string{"result"}, nil)
	descScheduleRuns = prometheus.NewDesc("hypersdk_schedule_runs_total",
		"Schedule runs by result: triggered, successful (every job completed), failed; cluster-wide", []string{"result"}, nil)
	descWSClients     = prometheus.NewDesc("hypersdk_ws_clients", "WebSocket clients connected to this controller", nil, nil)
	descLeaseExpiries = prometheus.NewDesc("hypersdk_lease_expiries_total",
		"Leases that expired (an agent stopped renewing); cluster-wide", nil, nil)
	descRequeues = prometheus.NewDesc("hypersdk_jobs_requeued_total",
		"Attempts that ended with their job pending again (expiry, a retryable failure, a hand-back); cluster-wide", nil, nil)
)

// RegisterEvents adds the schedule, webhook and WebSocket metrics.
func (m *Metrics) RegisterEvents(src EventsSource) {
	m.Registry.MustRegister(&eventsCollector{src: src})
}

type eventsCollector struct{ src EventsSource }

func (c *eventsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descWebhookDeliveries
	ch <- descScheduleRuns
	ch <- descWSClients
	ch <- descLeaseExpiries
	ch <- descRequeues
}

func (c *eventsCollector) Collect(ch chan<- prometheus.Metric) {
	ok, failed, dropped := c.src.WebhookDeliveryCounters()
	for _, v := range []struct {
		result string
		n      uint64
	}{{"success", ok}, {"failure", failed}, {"dropped", dropped}} {
		ch <- prometheus.MustNewConstMetric(descWebhookDeliveries, prometheus.CounterValue, float64(v.n), v.result)
	}
	trig, succ, fail := c.src.ScheduleRunCounters()
	for _, v := range []struct {
		result string
		n      uint64
	}{{"triggered", trig}, {"successful", succ}, {"failed", fail}} {
		ch <- prometheus.MustNewConstMetric(descScheduleRuns, prometheus.CounterValue, float64(v.n), v.result)
	}
	ch <- prometheus.MustNewConstMetric(descWSClients, prometheus.GaugeValue, float64(c.src.WSClients()))
	exp, req := c.src.LeaseCounters()
	ch <- prometheus.MustNewConstMetric(descLeaseExpiries, prometheus.CounterValue, float64(exp))
	ch <- prometheus.MustNewConstMetric(descRequeues, prometheus.CounterValue, float64(req))
}
