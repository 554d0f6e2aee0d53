// Package metrics holds a controller's Prometheus registry: the API document's metric names
// plus the cluster's own. Each controller has its own registry (several run in one test
// process), never the global default.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/version"
)

// Source is what the scrape-time collectors read.
type Source interface {
	Counts() map[proto.JobStatus]int
	// ActiveWorkers is the number of busy job slots in the fleet.
	ActiveWorkers() int
	// Raft returns the raft role (1 = leader), commit index, applied index, last log index.
	Raft() (leader bool, commit, applied, last uint64)
	// RaftHealth is the cluster's health as this controller sees it.
	RaftHealth() RaftHealth
	// OldestPendingSeconds is how long the job pending longest has waited (ok false: none).
	OldestPendingSeconds() (float64, bool)
}

// RaftHealth is what the raft metrics beyond the indexes show.
type RaftHealth struct {
	// Peers is every member as the leader sees it: set on the leader only, the one node
	// that hears from all of them.
	Peers []RaftPeer
	// LeaderContactSeconds is how long ago a follower last heard from a leader (0 on the
	// leader, -1 when it never has).
	LeaderContactSeconds float64
	// CatchingUp: this node's reads answer 503 until it has caught up; Lag is how many
	// committed entries it has not applied.
	CatchingUp bool
	Lag        uint64
}

// RaftPeer is one member as the leader sees it.
type RaftPeer struct {
	ID        string
	Reachable bool
	// LastContactSeconds is how long ago it last answered (-1: never).
	LastContactSeconds float64
}

// Metrics is a controller's registry and the instruments handlers update.
type Metrics struct {
	Registry        *prometheus.Registry
	Requests        *prometheus.CounterVec
	RequestDuration *prometheus.HistogramVec
	JobsSubmitted   prometheus.Counter
	Forwarded       *prometheus.CounterVec
}

// New builds the registry. src may be nil until the controller is wired (then set by Bind).
func New(src Source) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypersdk_api_requests_total", Help: "Total API requests",
		}, []string{"method", "path", "status", "code"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hypersdk_api_request_duration_seconds", Help: "API request duration",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "path"}),
		JobsSubmitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hypersdk_jobs_submitted_total", Help: "Jobs accepted by this controller's API (including forwarded ones)",
		}),
		Forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hypersdk_api_forwarded_total", Help: "Write requests this follower forwarded to the leader, by outcome",
		}, []string{"result"}),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "hypersdk_build_info", Help: "Build information",
	}, []string{"version", "commit", "go_version"})
	buildInfo.WithLabelValues(version.Version, version.Commit, runtime.Version()).Set(1)
	reg.MustRegister(m.Requests, m.RequestDuration, m.JobsSubmitted, m.Forwarded, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src != nil {
		reg.MustRegister(&stateCollector{src: src})
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// ObserveRequest records one API request; path must be the route template.
func (m *Metrics) ObserveRequest(method, path string, status int, seconds float64) {
	text := http.StatusText(status)
	if text == "" {
		text = strconv.Itoa(status)
	}
	m.Requests.WithLabelValues(method, path, text, strconv.Itoa(status)).Inc()
	// An agent's lease request is a long-poll that waits up to 25 s for work by design:
	// in the latency histogram it would read as a slow API.
	if path == LeaseLongPollPath {
		return
	}
	m.RequestDuration.WithLabelValues(method, path).Observe(seconds)
}

// LeaseLongPollPath is the agents' long-poll, kept out of the latency histogram.
const LeaseLongPollPath = "/agent/v1/lease"

var (
	descOldestPending = prometheus.NewDesc("hypersdk_jobs_oldest_pending_age_seconds",
		"Seconds the job pending longest has waited since its submission (0 when none is pending)", nil, nil)
	descJobs       = prometheus.NewDesc("hypersdk_jobs_total", "Total jobs by status", []string{"status"}, nil)
	descWorkers    = prometheus.NewDesc("hypersdk_workers_active", "Active workers (busy job slots in the fleet)", nil, nil)
	descRaftLeader = prometheus.NewDesc("hypersdk_raft_leader", "1 if this controller is the raft leader", nil, nil)
	descRaftCommit = prometheus.NewDesc("hypersdk_raft_commit_index", "Raft commit index", nil, nil)
	descRaftApply  = prometheus.NewDesc("hypersdk_raft_applied_index", "Raft applied index", nil, nil)
	descRaftLast   = prometheus.NewDesc("hypersdk_raft_last_index", "Raft last log index", nil, nil)
	descRaftPeers  = prometheus.NewDesc("hypersdk_raft_peers",
		"Raft members by state as the leader sees them: reachable (answered within seconds, the leader included) or unreachable; exported by the leader only", []string{"state"}, nil)
	descRaftPeerContact = prometheus.NewDesc("hypersdk_raft_peer_last_contact_seconds",
		"Seconds since the member last answered the leader; exported by the leader only", []string{"peer"}, nil)
	descRaftLeaderContact = prometheus.NewDesc("hypersdk_raft_leader_last_contact_seconds",
		"Seconds since this controller last heard from a leader (0 on the leader, -1 never)", nil, nil)
	descRaftCatchingUp = prometheus.NewDesc("hypersdk_raft_catching_up",
		"1 while this controller has not caught up with the leader (its reads answer 503)", nil, nil)
	descRaftLag = prometheus.NewDesc("hypersdk_raft_lag_entries",
		"Entries the leader has committed that this controller has not applied", nil, nil)
)

// stateCollector reads gauges from the state at scrape time: no bookkeeping on the hot path.
type stateCollector struct{ src Source }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descWorkers, descRaftLeader, descRaftCommit, descRaftApply, descRaftLast,
		descRaftPeers, descRaftPeerContact, descRaftLeaderContact, descRaftCatchingUp, descRaftLag, descOldestPending} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.src.Counts()
	for _, st := range proto.AllStatuses {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(c.src.ActiveWorkers()))
	leader, commit, applied, last := c.src.Raft()
	l := 0.0
	if leader {
		l = 1
	}
	ch <- prometheus.MustNewConstMetric(descRaftLeader, prometheus.GaugeValue, l)
	ch <- prometheus.MustNewConstMetric(descRaftCommit, prometheus.GaugeValue, float64(commit))
	ch <- prometheus.MustNewConstMetric(descRaftApply, prometheus.GaugeValue, float64(applied))
	ch <- prometheus.MustNewConstMetric(descRaftLast, prometheus.GaugeValue, float64(last))

	h := c.src.RaftHealth()
	if h.Peers != nil {
		var up, down float64
		for _, p := range h.Peers {
			if p.Reachable {
				up++
			} else {
				down++
			}
			if p.LastContactSeconds >= 0 {
				ch <- prometheus.MustNewConstMetric(descRaftPeerContact, prometheus.GaugeValue, p.LastContactSeconds, p.ID)
			}
		}
		ch <- prometheus.MustNewConstMetric(descRaftPeers, prometheus.GaugeValue, up, "reachable")
		ch <- prometheus.MustNewConstMetric(descRaftPeers, prometheus.GaugeValue, down, "unreachable")
	}
	ch <- prometheus.MustNewConstMetric(descRaftLeaderContact, prometheus.GaugeValue, h.LeaderContactSeconds)
	ch <- prometheus.MustNewConstMetric(descRaftCatchingUp, prometheus.GaugeValue, boolGauge(h.CatchingUp))
	ch <- prometheus.MustNewConstMetric(descRaftLag, prometheus.GaugeValue, float64(h.Lag))
	age, _ := c.src.OldestPendingSeconds()
	ch <- prometheus.MustNewConstMetric(descOldestPending, prometheus.GaugeValue, age)
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
