package state

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// allCommandTypes lists every command type ever defined (1–13, 20–26, 40–43). A new type is added
// here with its command.
var allCommandTypes = []CommandType{
	CmdSubmitJob, CmdCancelJobs, CmdLeaseGrant, CmdLeaseExpire, CmdProgress, CmdComplete, CmdFail,
	CmdRegisterNode, CmdRemoveNode, CmdSubmitBatch, CmdWarmReport, CmdCutover, CmdLeaseCommit,
	CmdScheduleUpsert, CmdScheduleDelete, CmdScheduleFired, CmdWebhookAdd, CmdWebhookDelete, CmdWebhookDelivered, CmdWebhookSeed,
	CmdAgentEnroll, CmdAgentForget, CmdAgentRotate, CmdAgentRotateRequest,
}

// Every known type is dispatched (a malformed payload is an error answer, never "unknown")
// and has a name.
func TestEveryCommandTypeIsDispatched(t *testing.T) {
	s := New()
	for i, ct := range allCommandTypes {
		r := s.Apply(uint64(i+1), append([]byte{byte(ct)}, "{not json"...))
		if err, _ := r.(error); !errors.Is(err, ErrBadCommand) {
			t.Errorf("%d (%s): malformed payload answered %v, want ErrBadCommand", ct, ct, r)
		}
		if ct.String() == fmt.Sprintf("command(%d)", uint8(ct)) {
			t.Errorf("command %d has no name", ct)
		}
	}
}

// Fault 3 of issue 11: a command type this binary does not know (written by a newer leader)
// used to be answered with an error and skipped, so the follower's state silently diverged.
// It now stops the node loudly before anything is applied.
func TestUnknownCommandTypeStopsTheNode(t *testing.T) {
	for _, ct := range []CommandType{0, 14, 19, 27, 200} {
		t.Run(fmt.Sprint(uint8(ct)), func(t *testing.T) {
			a := newApplier(t)
			a.ok(CmdSubmitJob, SubmitJob{Definition: def("j1")})
			before, applied := a.job("j1"), a.s.AppliedIndex()
			v := func() (v any) {
				defer func() { v = recover() }()
				a.s.Apply(applied+1, append([]byte{byte(ct)}, `{"id":"j1"}`...))
				return nil
			}()
			if v == nil {
				t.Fatalf("type %d: Apply returned; want it to stop the node", ct)
			}
			msg := fmt.Sprint(v)
			if !strings.Contains(msg, fmt.Sprint(uint8(ct))) || !strings.Contains(msg, "upgrade") {
				t.Fatalf("panic %q does not name the type and the fix", msg)
			}
			var uc *UnknownCommandError
			if err, ok := v.(error); !ok || !errors.As(err, &uc) || uc.Index != applied+1 {
				t.Fatalf("panic value %#v: want *UnknownCommandError at index %d", v, applied+1)
			}
			if a.s.AppliedIndex() != applied || a.job("j1") != before {
				t.Fatalf("state changed by an unknown command: applied %d → %d", applied, a.s.AppliedIndex())
			}
		})
	}
}
