package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/proto"
)

func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestParseServer(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{in: "127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{in: "https://ctl.example:8443/", want: "https://ctl.example:8443"},
		{in: "http://h:1/prefix/?q=1", want: "http://h:1/prefix"},
		{in: "ftp://h", err: "scheme"},
		{in: "http://user:pw@h:1", err: "credentials"},
		{in: " ", err: "empty"},
	}
	for _, tc := range cases {
		u, err := ParseServer(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("%q: want error with %q, got %v", tc.in, tc.err, err)
			}
			if strings.Contains(err.Error(), "pw@") {
				t.Fatalf("error shows the password: %v", err)
			}
			continue
		}
		if err != nil || u.String() != tc.want {
			t.Fatalf("%q: got %v %v, want %s", tc.in, u, err, tc.want)
		}
	}
}

// TestAgainstController: failover past a dead controller, typed errors with the status
// code, the WebSocket stream, against a real in-process controller.
func TestAgainstController(t *testing.T) {
	nodes := controller.StartTestCluster(t, 1)
	dead := deadAddr(t)
	c, err := New(Config{Servers: []string{dead, nodes[0].URL()}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	h, err := c.Health(ctx)
	if err != nil || h.Status != "ok" {
		t.Fatalf("health through failover: %+v %v", h, err)
	}
	if c.order()[0] != 1 {
		t.Fatalf("the controller that answered is not tried first next time: %v", c.order())
	}

	// A write whose connection was refused never reached anyone: the next one gets it.
	c2, _ := New(Config{Servers: []string{dead, nodes[0].URL()}})
	sub, err := c2.SubmitJob(ctx, proto.JobDefinition{VMPath: "DC0/vm/a",
		Source:      proto.Source{Type: "vsphere", VCenterURL: "vc.example", Username: "u", Password: "p"},
		Destination: proto.Destination{Type: "kvm"}})
	if err != nil || sub.JobID == "" {
		t.Fatalf("submit through failover: %+v %v", sub, err)
	}

	errCases := []struct {
		name   string
		call   func() error
		status int
		msg    string
	}{
		{"unknown job", func() error { _, err := c.Job(ctx, "nope"); return err }, 404, "job nope not found"},
		{"invalid job", func() error { _, err := c.SubmitJob(ctx, proto.JobDefinition{}); return err }, 400, "vm_path is required"},
		{"raw JSON unknown field", func() error { _, err := c.SubmitJobJSON(ctx, []byte(`{"x":1}`)); return err }, 400, `unknown field "x"`},
		{"unknown agent", func() error { _, err := c.Agent(ctx, "ghost"); return err }, 404, "agent ghost not found"},
		{"bad webhook index", func() error { _, err := c.DeleteWebhook(ctx, 3); return err }, 404, "webhook index 3"},
	}
	for _, tc := range errCases {
		err := tc.call()
		var ae *APIError
		if !errors.As(err, &ae) || ae.StatusCode != tc.status || !strings.Contains(ae.Message, tc.msg) || ae.Server != nodes[0].URL() {
			t.Fatalf("%s: want %d %q, got %#v", tc.name, tc.status, tc.msg, err)
		}
		if StatusCode(err) != tc.status {
			t.Fatalf("%s: StatusCode = %d", tc.name, StatusCode(err))
		}
	}

	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := c.Stream(sctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var types []string
	for len(types) < 2 {
		m, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, m.Type)
	}
	if types[0] != proto.WSJobs || types[1] != proto.WSStatus {
		t.Fatalf("stream opened with %v, want jobs then status", types)
	}
}

func TestUnreachableIsOneLine(t *testing.T) {
	a, b := deadAddr(t), deadAddr(t)
	c, _ := New(Config{Servers: []string{a, b}})
	_, err := c.Status(context.Background())
	var ue *UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("want UnreachableError, got %#v", err)
	}
	want := "cannot reach any of http://" + a + ", http://" + b + " (connection refused)"
	if err.Error() != want {
		t.Fatalf("got %q, want %q", err, want)
	}
	// The password of a VM query is in the URL's query string: never in the error.
	_, err = c.ListVMs(context.Background(), VCenter{URL: "vc", Username: "u", Password: "hunter2-secret"}, "")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error %v", err)
	}
	if _, err := c.Stream(context.Background()); !errors.As(err, &ue) {
		t.Fatalf("stream: want UnreachableError, got %#v", err)
	}
}

// TestBearerToken checks what goes on the wire, with a plain HTTP server standing in for
// a controller with authentication (not implemented by the controller yet).
func TestBearerToken(t *testing.T) {
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Authorization")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"token not accepted"}`))
	}))
	defer srv.Close()
	c, _ := New(Config{Servers: []string{srv.URL}, Token: "tok-1"})
	_, err := c.Status(context.Background())
	if h := <-got; h != "Bearer tok-1" {
		t.Fatalf("Authorization %q", h)
	}
	if StatusCode(err) != 401 || !strings.Contains(err.Error(), "token not accepted (HTTP 401)") {
		t.Fatalf("got %v", err)
	}
	if _, err := New(Config{Token: "a\nb"}); err == nil {
		t.Fatal("a token with a line break was accepted")
	}
}
