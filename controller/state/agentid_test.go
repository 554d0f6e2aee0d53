package state

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func credHash(c byte) string { return strings.Repeat(string(c), 64) }

// The identity rules every node applies the same way: one credential per name, a second
// enrolment under a live name refused, rotation only from the current credential,
// forget frees the name.
func TestAgentIdentityCommands(t *testing.T) {
	s := New()
	idx := uint64(0)
	apply := func(ct CommandType, c any) any {
		idx++
		return s.Apply(idx, MustEncode(ct, c))
	}
	steps := []struct {
		name string
		ct   CommandType
		cmd  any
		want error // nil: success
	}{
		{"enrol a", CmdAgentEnroll, AgentEnroll{Name: "a", CredentialSHA256: credHash('a'), At: t0}, nil},
		{"same credential again (lost answer)", CmdAgentEnroll, AgentEnroll{Name: "a", CredentialSHA256: credHash('a'), At: t0}, nil},
		{"impostor under a's name", CmdAgentEnroll, AgentEnroll{Name: "a", CredentialSHA256: credHash('b'), At: t0}, ErrExists},
		{"a's credential under another name", CmdAgentEnroll, AgentEnroll{Name: "b", CredentialSHA256: credHash('a'), At: t0}, ErrExists},
		{"not a hash", CmdAgentEnroll, AgentEnroll{Name: "c", CredentialSHA256: "secret", At: t0}, ErrBadCommand},
		{"rotate from a stale credential", CmdAgentRotate, AgentRotate{Name: "a", Old: credHash('9'), New: credHash('c'), At: t0}, ErrStaleLease},
		{"request rotation", CmdAgentRotateRequest, AgentRotateRequest{Name: "a"}, nil},
		{"rotate", CmdAgentRotate, AgentRotate{Name: "a", Old: credHash('a'), New: credHash('c'), At: t0}, nil},
		{"rotation retried", CmdAgentRotate, AgentRotate{Name: "a", Old: credHash('a'), New: credHash('c'), At: t0}, nil},
		{"forget unknown", CmdAgentForget, AgentForget{Name: "zz"}, ErrNotFound},
		{"enrol b", CmdAgentEnroll, AgentEnroll{Name: "b", CredentialSHA256: credHash('d'), At: t0}, nil},
		{"forget b", CmdAgentForget, AgentForget{Name: "b"}, nil},
		{"b enrols anew after forget", CmdAgentEnroll, AgentEnroll{Name: "b", CredentialSHA256: credHash('e'), At: t0}, nil},
	}
	for _, st := range steps {
		r := apply(st.ct, st.cmd)
		err, _ := r.(error)
		if (st.want == nil) != (err == nil) || (st.want != nil && !errors.Is(err, st.want)) {
			t.Fatalf("%s: %v, want %v", st.name, r, st.want)
		}
	}
	if _, ok := s.AgentByCredential(credHash('a')); ok {
		t.Fatal("the rotated-out credential still authenticates")
	}
	if id, ok := s.AgentByCredential(credHash('c')); !ok || id.Name != "a" || id.RotateRequested {
		t.Fatalf("a after rotation: %+v %v", id, ok)
	}
	if _, ok := s.AgentByCredential(credHash('d')); ok {
		t.Fatal("a forgotten credential still authenticates")
	}
	if id, ok := s.AgentByCredential(credHash('e')); !ok || id.Name != "b" {
		t.Fatalf("b: %+v %v", id, ok)
	}

	// A node restored from a snapshot knows the same identities.
	r := New()
	if err := (FSM{r}).Restore(io.NopCloser(bytes.NewReader(persist(t, s)))); err != nil {
		t.Fatal(err)
	}
	if a, b := persist(t, s), persist(t, r); !bytes.Equal(a, b) {
		t.Fatalf("restored:\n%s\nwant:\n%s", b, a)
	}
	if id, ok := r.AgentByCredential(credHash('c')); !ok || id.Name != "a" {
		t.Fatalf("restored a: %+v %v", id, ok)
	}
}
