package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hypersdk/hypersdk/proto"
)

type fakeSource struct{ oldest float64 }

func (fakeSource) Counts() map[proto.JobStatus]int {
	return map[proto.JobStatus]int{proto.StatusPending: 1}
}
func (fakeSource) ActiveWorkers() int                   { return 0 }
func (fakeSource) Raft() (bool, uint64, uint64, uint64) { return true, 1, 1, 1 }
func (fakeSource) RaftHealth() RaftHealth               { return RaftHealth{} }
func (f fakeSource) OldestPendingSeconds() (float64, bool) {
	return f.oldest, f.oldest > 0
}

// TestAlertableMetrics: requests carry the numeric code beside the status text; the
// agents' lease long-poll is counted but kept out of the latency histogram; the age of
// the oldest pending job is exported.
func TestAlertableMetrics(t *testing.T) {
	m := New(fakeSource{oldest: 42})
	m.ObserveRequest("POST", LeaseLongPollPath, 200, 25)
	m.ObserveRequest("GET", "/jobs/{id}", 503, 0.01)
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("GET", "/jobs/{id}", "Service Unavailable", "503")); got != 1 {
		t.Fatalf("503 counted %v times under code 503", got)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("POST", LeaseLongPollPath, "OK", "200")); got != 1 {
		t.Fatalf("lease poll counted %v times", got)
	}
	if n := testutil.CollectAndCount(m.RequestDuration); n != 1 {
		t.Fatalf("%d latency series, want only /jobs/{id}'s (the long-poll kept out)", n)
	}
	want := "# HELP hypersdk_jobs_oldest_pending_age_seconds Seconds the job pending longest has waited since its submission (0 when none is pending)\n" +
		"# TYPE hypersdk_jobs_oldest_pending_age_seconds gauge\nhypersdk_jobs_oldest_pending_age_seconds 42\n"
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "hypersdk_jobs_oldest_pending_age_seconds"); err != nil {
		t.Fatal(err)
	}
}
