package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/test/fleettest"
)

// TestWarmCommands: jobs cutover (asked, asked again, a cold job, an unknown job) and the
// Warm line of jobs get, against a real controller.
func TestWarmCommands(t *testing.T) {
	nodes := controller.StartTestCluster(t, 1)
	env := map[string]string{"HYPERSDK_SERVER": nodes[0].URL()}
	submit := func(def proto.JobDefinition) string {
		t.Helper()
		b, _ := json.Marshal(def)
		r := hyperctl(t, env, string(b), "jobs", "submit", "-f", "-", "-o", "json")
		var res proto.SubmitResponse
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &res) != nil {
			t.Fatalf("submit: %s", r)
		}
		return res.JobID
	}
	warm := fleettest.JobBody("DC0/vm/db-1")
	warm.Options.Warm, warm.Options.PrecopyIntervalSeconds = true, 600
	warmID := submit(warm)
	coldID := submit(fleettest.JobBody("DC0/vm/web-1"))

	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		want   string
		errHas string
	}{
		{"get a warm job", []string{"jobs", "get", warmID}, 0, "precopy, 0 round(s) (every 10m00s, cutover on request (hyperctl jobs cutover ID))", ""},
		{"cutover", []string{"jobs", "cutover", warmID}, 0, "cutover requested: the job cuts over after the round in progress", ""},
		{"cutover again", []string{"jobs", "cutover", warmID}, 0, "cutover already requested", ""},
		{"get after the request", []string{"jobs", "get", warmID}, 0, "cutover requested", ""},
		{"cutover of a cold job", []string{"jobs", "cutover", coldID}, exitRejected, "", "not a warm migration"},
		{"cutover of an unknown job", []string{"jobs", "cutover", "no-such-job"}, exitRejected, "", "HTTP 404"},
		{"cutover needs an id", []string{"jobs", "cutover"}, exitUsage, "", "expected one job ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := hyperctl(t, env, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout, tc.want) || !strings.Contains(r.stderr, tc.errHas) {
				t.Fatalf("want exit %d, stdout with %q, stderr with %q; got %s", tc.code, tc.want, tc.errHas, r)
			}
		})
	}
	// jobs submit --warm sets the options; the controller judges them.
	r := hyperctl(t, env, jobJSON("DC0/vm/flags"), "jobs", "submit", "-f", "-", "-o", "json", "--warm", "--precopy-interval", "90s", "--cutover-at", "2030-01-02T03:04:05Z")
	var sub proto.SubmitResponse
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &sub) != nil {
		t.Fatalf("submit --warm: %s", r)
	}
	j, _ := nodes[0].State.Job(sub.JobID)
	if o := j.Definition.Options; !o.Warm || o.PrecopyIntervalSeconds != 90 || o.CutoverAt == nil || o.CutoverAt.Year() != 2030 {
		t.Fatalf("options of the job submitted with --warm: %+v", o)
	}
	// A warm job's cutover defines and boot-checks as a cold job does: the flags combine.
	r = hyperctl(t, env, jobJSON("DC0/vm/warm-boot"), "jobs", "submit", "-f", "-", "-o", "json", "--warm", "--verify-boot", "--boot-timeout", "2m")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &sub) != nil {
		t.Fatalf("submit --warm --verify-boot: %s", r)
	}
	j, _ = nodes[0].State.Job(sub.JobID)
	if o := j.Definition.Options; !o.Warm || !o.VerifyBoot || o.BootTimeoutSeconds != 120 {
		t.Fatalf("options of the job submitted with --warm --verify-boot: %+v", o)
	}
	https := fleettest.JobBody("DC0/vm/https")
	https.Options.ConversionMethod = "https"
	b, _ := json.Marshal(https)
	for _, tc := range []struct {
		args   []string
		stdin  string
		code   int
		errHas string
	}{
		{[]string{"--cutover-at", "2030-01-02T03:04:05Z"}, jobJSON("x"), exitUsage, "go with --warm"},
		{[]string{"--warm", "--cutover-at", "tomorrow"}, jobJSON("x"), exitUsage, "RFC 3339"},
		{[]string{"--warm", "--precopy-interval", "1500ms"}, jobJSON("x"), exitUsage, "whole seconds"},
		{[]string{"--warm"}, string(b), exitUsage, "vddk"}, // bad input: exit 2 (issue 17)
	} {
		r := hyperctl(t, env, tc.stdin, append([]string{"jobs", "submit", "-f", "-"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.errHas) {
			t.Errorf("submit %v: want exit %d with %q; got %s", tc.args, tc.code, tc.errHas, r)
		}
	}

	r = hyperctl(t, env, "", "jobs", "cutover", warmID, "-o", "json")
	var out proto.CutoverResponse
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil || !out.AlreadyRequested || out.JobID != warmID {
		t.Fatalf("cutover json: %s", r)
	}
}

// TestDescribeWarm: the Warm line of jobs get through a warm job's life.
func TestDescribeWarm(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	recent := time.Now().Add(-90 * time.Second)
	warm := proto.Options{Warm: true, PrecopyIntervalSeconds: 600}
	atTime := proto.Options{Warm: true, CutoverAt: &at}
	for _, tc := range []struct {
		name string
		opts proto.Options
		w    *proto.WarmStatus
		want []string
	}{
		{"cold", proto.Options{}, nil, nil},
		{"pending", warm, nil, []string{"precopy every 10m00s, cutover on request"}},
		{"between rounds", warm, &proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 3, LastRoundAt: &recent, ChangedBytes: 41 << 20, NextRoundAt: &at},
			[]string{"precopy, 3 round(s)", "last round 1m30s ago: 41.0 MiB", "next round at 2030-01-02T03:04:05Z"}},
		{"cutover at a time", atTime, &proto.WarmStatus{Phase: proto.WarmPhaseCutover, Rounds: 2}, []string{"cutover, 2 round(s)", "cutover at 2030-01-02T03:04:05Z"}},
		{"done", warm, &proto.WarmStatus{Phase: proto.WarmPhaseDone, Rounds: 4, CutoverRequested: true, DowntimeSeconds: 0.86},
			[]string{"done, 4 round(s)", "downtime 0.9s"}},
		{"full copy", warm, &proto.WarmStatus{Phase: proto.WarmPhasePrecopy, Rounds: 1, FullCopy: "the earlier attempt's copy is on agent a1"},
			[]string{"the earlier attempt's copy is on agent a1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := describeWarm(tc.opts, tc.w)
			if tc.want == nil && got != "" {
				t.Errorf("a cold job's warm line %q", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
		})
	}
}
