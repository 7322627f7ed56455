package replicate

import (
	"errors"
	"testing"

	"doppel/introspect"
)

// TestAdoptBlockersKeepsOtherReasons: adoption forgives a root that is not
// a session leader, but not another blocker joined to it in the same
// verdict.
func TestAdoptBlockersKeepsOtherReasons(t *testing.T) {
	root := func(reason string) *introspect.Graph {
		return &introspect.Graph{Nodes: []*introspect.Node{{ID: "process:10", Kind: introspect.KindProcess, Label: "app",
			Verdict: introspect.Verdict{Level: introspect.LevelBlocker, Reason: reason}}}}
	}
	session := "root is not a session leader (sid 3): CRIU refuses without --shell-job; start the app with setsid"
	if err := adoptBlockers(root(session)); err != nil {
		t.Fatalf("session leader alone: %v", err)
	}
	traced := "traced by pid 7 (ptrace): CRIU cannot seize a traced task"
	for _, reason := range []string{traced + "; " + session, session + "; " + traced} {
		err := adoptBlockers(root(reason))
		var be *introspect.BlockedError
		if !errors.As(err, &be) {
			t.Fatalf("%q: %v, want a BlockedError", reason, err)
		}
		if len(be.Blockers) != 1 || be.Blockers[0].Reason != traced {
			t.Fatalf("%q: blockers %v, want the ptrace reason only", reason, be.Blockers)
		}
	}
}
