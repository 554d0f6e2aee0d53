package main

import (
	"encoding/json"
	"strings"
	"testing"

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
		{[]string{"--warm"}, string(b), exitRejected, "vddk"},
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
