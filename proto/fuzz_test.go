package proto

import (
	"encoding/json"
	"testing"
)

// Every request decoder of the API goes through DecodeStrict and Validate: whatever the
// bytes, they must return an error or a value that validates and survives a round trip,
// never panic. The seeds are committed under testdata/fuzz; `make test` runs them and a
// short fuzzing pass, `make fuzz` fuzzes longer.

func fuzzDecode[T any](f *testing.F, seeds []string, validate func(*T) error) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var v T
		if err := DecodeStrict(b, &v, false); err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := validate(&v); err != nil {
			return
		}
		out, err := json.Marshal(&v)
		if err != nil {
			t.Fatalf("a valid request does not re-encode: %v", err)
		}
		var again T
		if err := DecodeStrict(out, &again, false); err != nil {
			t.Fatalf("re-encoded request does not decode: %v\n%s", err, out)
		}
		if err := validate(&again); err != nil {
			t.Fatalf("re-encoded request no longer validates: %v\n%s", err, out)
		}
	})
}

func FuzzJobDefinition(f *testing.F) {
	fuzzDecode(f, []string{
		`{"vm_path":"DC0/vm/a","source":{"type":"vsphere","vcenter_url":"vc","username":"u","password":"p"},"destination":{"type":"kvm"}}`,
		`{"vm_path":"DC0/vm/a","source":{"type":"vsphere","vcenter_url":"https://vc:443/sdk","username":"u","password":"p","insecure":true},"destination":{"type":"kvm","libvirt_uri":"qemu+ssh://h/system"},"options":{"conversion_method":"nfc","network_mapping":{"VM Network":"bridge:br0"},"shutdown":true}}`,
		`{"vm_path":1}`, `[]`, `{"vm_path":"\u0000"}`, `{"source":{"vcenter_url":"https://u:p@h"}}`,
	}, func(d *JobDefinition) error { return d.Validate() })
}

func FuzzQueryRequest(f *testing.F) {
	fuzzDecode(f, []string{`{"all":true,"status":"running","limit":10}`, `{"status":["pending","failed"],"offset":5}`, `{"cursor":"17"}`, `{"status":7}`, `{"limit":-1}`},
		func(q *QueryRequest) error { return q.Validate() })
}

func FuzzCancelRequest(f *testing.F) {
	fuzzDecode(f, []string{`{"job_ids":["a","b"]}`, `{"status":"pending"}`, `{"job_ids":[""]}`, `{"status":"completed"}`},
		func(c *CancelRequest) error { return c.Validate() })
}

func FuzzAgentRequests(f *testing.F) {
	seeds := []string{
		`{"agent":"a","max_jobs":2,"capacity":{"cpus":4},"capabilities":{"methods":["https"]}}`,
		`{"agent":"a","leases":[{"job_id":"j","attempt":1}]}`,
		`{"agent":"a","job_id":"j","attempt":1,"progress":{"stage":"conversion","percent_complete":50}}`,
		`{"agent":"a","job_id":"j","attempt":1,"error":"x","retryable":true}`,
		`{"agent":"a","credential_sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// One input exercises every agent decoder.
		var lr LeaseRequest
		if DecodeStrict(b, &lr, false) == nil {
			_ = lr.Validate()
		}
		var hb HeartbeatRequest
		if DecodeStrict(b, &hb, false) == nil {
			_ = hb.Validate()
		}
		var pr ProgressRequest
		if DecodeStrict(b, &pr, false) == nil {
			_ = pr.Validate()
		}
		var cr CompleteRequest
		if DecodeStrict(b, &cr, false) == nil {
			_ = cr.Validate()
		}
		var fr FailRequest
		if DecodeStrict(b, &fr, false) == nil {
			_ = fr.Validate()
		}
		var er EnrollRequest
		if DecodeStrict(b, &er, false) == nil {
			_ = er.Validate()
		}
	})
}

func FuzzNodeMeta(f *testing.F) {
	m := NodeMeta{Role: RoleAgent, Name: "kvm-1", APIAddr: "10.0.0.1:8082", MaxJobs: 2,
		Capabilities: AgentCapabilities{Methods: []string{"https", "nfc"}, NbdkitPlugins: []string{"curl"}}}
	if b, err := m.Encode(); err == nil {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Foreign or corrupt gossip metadata must be rejected, never crash a controller.
		got, err := DecodeNodeMeta(b)
		if err != nil {
			return
		}
		if got.Validate() != nil {
			return
		}
		if enc, err := got.Encode(); err != nil || len(enc) > NodeMetaMaxSize {
			t.Fatalf("decoded meta does not re-encode within limits: %v len %d", err, len(enc))
		}
	})
}
