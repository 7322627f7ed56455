package node

import (
	"testing"
	"time"
)

func TestAffirmationsRevoke(t *testing.T) {
	const lease = 1500 * time.Millisecond
	full := lease + leaseMargin(lease)
	t0 := time.Unix(1000, 0)
	check := func(what string, a *affirmations, op string, term uint64, now time.Time, want time.Duration) {
		t.Helper()
		w, release := a.revoke(op, lease, term, now)
		release()
		if w != want {
			t.Errorf("%s: wait %s, want %s", what, w, want)
		}
	}

	var a affirmations
	check("not leader", &a, "a", 1, t0, full)

	a.leading(true, 2, t0)
	// Just elected: a predecessor may have answered until the election.
	check("elected 200 ms ago", &a, "a", 2, t0.Add(200*time.Millisecond), full-200*time.Millisecond)
	// Long elected, never answered a: nothing to wait.
	check("never answered", &a, "a", 2, t0.Add(time.Minute), 0)
	// Answered 1 s ago: the rest of that lease.
	now := t0.Add(time.Minute)
	a.answer("a", now.Add(-time.Second))
	check("answered 1 s ago", &a, "a", 2, now, full-time.Second)
	// A raft term this node has not seen itself lead in: the whole lease.
	check("unseen term", &a, "a", 3, now, full)

	// While revoked, the old OP gets no answer (no renewal); others do.
	_, release := a.revoke("a", lease, 2, now)
	if a.answer("a", now) {
		t.Fatal("a revoked node was answered")
	}
	if !a.answer("b", now) {
		t.Fatal("another node was refused")
	}
	// Revocations nest.
	_, release2 := a.revoke("a", lease, 2, now)
	release()
	if a.answer("a", now) {
		t.Fatal("answered while a second revocation holds")
	}
	release2()
	if !a.answer("a", now.Add(time.Millisecond)) {
		t.Fatal("still refused after release")
	}

	// Losing leadership forgets every answer.
	a.leading(false, 2, now)
	check("after losing leadership", &a, "b", 2, now.Add(time.Minute), full)
}
