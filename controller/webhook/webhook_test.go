package webhook

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/netpolicy"
	"github.com/hypersdk/hypersdk/shared/secrets"
)

func TestSend(t *testing.T) {
	var mu sync.Mutex
	var got http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			// The server notices the client hanging up only once the body was read.
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/ok":
			mu.Lock()
			got = r.Header.Clone()
			mu.Unlock()
		}
	}))
	t.Cleanup(srv.Close)
	cases := []struct {
		name, path  string
		errContains string
	}{
		{"success", "/ok", ""},
		{"a redirect is not followed", "/redirect", "302"},
		{"each attempt has its deadline", "/hang", "no answer within 1s"},
		{"receiver down", "", "refused"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := srv.URL + tc.path
			if tc.path == "" {
				url = "http://127.0.0.1:1/x"
			}
			hook := proto.Webhook{URL: url + "?token=abc", Timeout: 1, Secret: "k", Headers: map[string]string{"Authorization": "Bearer t"}}
			start := time.Now()
			err := Send(context.Background(), NewClient(netpolicy.Policy{AllowPrivate: true, AllowHTTP: true}), hook, "42", "job.failed", []byte(`{"event":"job.failed"}`))
			if tc.errContains == "" && err != nil || tc.errContains != "" && (err == nil || !strings.Contains(err.Error(), tc.errContains)) {
				t.Fatalf("err %v, want %q", err, tc.errContains)
			}
			if err != nil && strings.Contains(err.Error(), "token=abc") {
				t.Fatalf("error repeats the URL's query: %v", err)
			}
			if time.Since(start) > 3*time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if got.Get(proto.HeaderWebhookDelivery) != "42" || got.Get(proto.HeaderWebhookEvent) != "job.failed" ||
		got.Get(proto.HeaderWebhookSignature) != Sign("k", []byte(`{"event":"job.failed"}`)) || got.Get("Authorization") != "Bearer t" ||
		got.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", got)
	}
	// The reference value of HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
	if Sign("key", []byte("The quick brown fox jumps over the lazy dog")) != "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8" {
		t.Fatal("signature is not HMAC-SHA256 hex")
	}
}

func TestBackoffDoublesWithJitter(t *testing.T) {
	d := New(Config{Backoff: 100 * time.Millisecond, MaxBackoff: 350 * time.Millisecond}, state.New(), nil)
	for _, tc := range []struct {
		attempt int
		base    time.Duration
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 350 * time.Millisecond}, {8, 350 * time.Millisecond}} {
		for i := 0; i < 50; i++ {
			if b := d.backoff(tc.attempt); b < tc.base/2 || b >= tc.base*3/2 {
				t.Fatalf("retry %d waited %v, want [%v, %v)", tc.attempt, b, tc.base/2, tc.base*3/2)
			}
		}
	}
}

// The deliverer retries a failing receiver, then records the delivery, which empties the
// outbox; a receiver that never recovers is given up on after retry_count retries.
func TestRunDeliversAndRecords(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls[r.URL.Path]++
		if r.URL.Path == "/broken" || calls[r.URL.Path] <= 2 {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	t.Cleanup(srv.Close)
	st := state.New()
	a := state.NewLocalApplier(st)
	retries := 2
	seed := []proto.Webhook{}
	for _, p := range []string{"/flaky", "/broken"} {
		r := proto.WebhookRequest{URL: srv.URL + p, Events: []string{proto.EventJobSubmitted}, RetryCount: &retries}
		seed = append(seed, r.Webhook())
	}
	d := New(Config{Backoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Poll: 20 * time.Millisecond, Seed: seed,
		Policy: netpolicy.Policy{AllowPrivate: true, AllowHTTP: true}}, st, a)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	deadline := time.Now().Add(5 * time.Second)
	for !st.WebhooksSeeded() && time.Now().Before(deadline) {
		<-time.After(5 * time.Millisecond)
	}
	def := proto.JobDefinition{ID: "j", VMPath: "DC0/vm/j", Source: proto.Source{Type: "vsphere", VCenterURL: "127.0.0.1:1", Username: "u", Password: "pw"}, Destination: proto.Destination{Type: "kvm"}}
	if _, err := a.Apply(state.MustEncode(state.CmdSubmitJob, state.SubmitJob{Definition: def})); err != nil {
		t.Fatal(err)
	}
	for st.OutboxLen() > 0 && time.Now().Before(deadline) {
		<-time.After(5 * time.Millisecond)
	}
	ok, failed, dropped := st.WebhookDeliveryCounters()
	mu.Lock()
	defer mu.Unlock()
	if st.OutboxLen() != 0 || ok != 1 || failed != 1 || dropped != 0 {
		t.Fatalf("outbox %d, counters %d/%d/%d", st.OutboxLen(), ok, failed, dropped)
	}
	if calls["/flaky"] != 3 || calls["/broken"] != 3 {
		t.Fatalf("attempts %v, want 3 each (1 + retry_count 2)", calls)
	}
}

// Header values and the secret are sealed for the raft log and opened for a delivery; the
// stored webhook (shared by every reader of the state) is never changed in place.
func TestSealAndOpenSecrets(t *testing.T) {
	box, err := secrets.NewBox("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := secrets.NewBox("1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100")
	hook := proto.Webhook{ID: "wh-1", URL: "https://x.example/h", Secret: "hmac-key", Headers: map[string]string{"Authorization": "Bearer t"}}
	sealed, err := SealSecrets(box, hook)
	if err != nil {
		t.Fatal(err)
	}
	if !secrets.Sealed(sealed.Secret) || !secrets.Sealed(sealed.Headers["Authorization"]) || hook.Headers["Authorization"] != "Bearer t" {
		t.Fatalf("sealed %+v, original %+v", sealed, hook)
	}
	opened, err := OpenSecrets(box, sealed)
	if err != nil || opened.Secret != "hmac-key" || opened.Headers["Authorization"] != "Bearer t" || !secrets.Sealed(sealed.Secret) {
		t.Fatalf("opened %+v %v", opened, err)
	}
	if _, err := OpenSecrets(other, sealed); err == nil || strings.Contains(err.Error(), "hmac-key") {
		t.Fatalf("another key: %v", err)
	}
	if _, err := OpenSecrets(nil, sealed); err == nil {
		t.Fatal("no key opened a sealed secret")
	}
	if clear, err := SealSecrets(nil, hook); err != nil || clear.Secret != "hmac-key" {
		t.Fatalf("without a key: %+v %v", clear, err)
	}
}

// Issue 18: webhook tests and deliveries reached loopback and private addresses. With the
// default policy they never connect there, whether the URL names the address or a name
// that resolves to it, and a test answers only "unreachable".
func TestDeliveriesFollowTheOutboundPolicy(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	var conns atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	byName := "https://localhost:" + port + "/hook"

	d := New(Config{}, state.New(), nil)
	cases := []struct {
		url     string
		wantErr error
	}{
		{srv.URL + "/hook", proto.ErrInvalid},            // an address literal: refused before anything is dialled
		{byName, ErrUnreachable},                         // a name: refused when dialled
		{"http://hooks.example.com/x", proto.ErrInvalid}, // http without allow_http_targets
	}
	for _, tc := range cases {
		err := d.Test(context.Background(), proto.WebhookTestRequest{URL: tc.url})
		if !errors.Is(err, tc.wantErr) {
			t.Fatalf("test %s: %v, want %v", tc.url, err, tc.wantErr)
		}
		if errors.Is(err, ErrUnreachable) && err.Error() != ErrUnreachable.Error() {
			t.Fatalf("test %s: %q tells more than %q", tc.url, err, ErrUnreachable)
		}
	}
	// A delivery of the outbox goes through the same dialer.
	hook := proto.Webhook{ID: "w", URL: byName, Timeout: 2}
	if res, _ := d.deliver(context.Background(), hook, &state.OutboxEntry{ID: 1, Event: proto.EventJobSubmitted, Payload: []byte(`{}`)}); res != state.DeliveryFailure {
		t.Fatalf("delivery result %s", res)
	}
	if conns.Load() != 0 || hits.Load() != 0 {
		t.Fatalf("the receiver on loopback saw %d connections, %d requests", conns.Load(), hits.Load())
	}
	// Allowed, the same receiver is reached (its certificate is the test's own).
	allowed := New(Config{Policy: netpolicy.Policy{AllowPrivate: true}, Client: nil}, state.New(), nil)
	tr := allowed.cfg.Client.Transport.(*http.Transport)
	tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig
	if err := allowed.Test(context.Background(), proto.WebhookTestRequest{URL: srv.URL + "/hook"}); err != nil {
		t.Fatalf("allowed test: %v", err)
	}
	if hits.Load() != 1 {
		t.Fatalf("receiver hits %d, want 1", hits.Load())
	}
}
