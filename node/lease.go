package node

import (
	"sync"
	"time"
)

// An OP renews its service lease by asking the raft leader for its applied
// index (rpcIndex; the leader asks itself the same way) and finding itself
// still OP at that index; the lease runs from the moment it asked. The
// leader answers only after confirming its leadership with a majority
// (VerifyLeader), so a deposed leader renews nobody's lease. Hence an OP's
// lease ends, in real time, at most one lease after the leader last
// answered it, and any answer of an earlier leader came before this
// leader was elected.
//
// affirmations keeps, on the leader, when it became leader and when it
// last answered each node. When the leader promotes a clone without a
// handover, it stops answering the old OP until the promotion is applied,
// and tells the new OP how long the old lease can still run: from the
// later of its last answer and its own election, one lease (plus a margin)
// minus now. The new OP waits that long, measured on its own clock from
// when it saw the promotion (after the leader computed it), so no two
// clocks need to agree.
type affirmations struct {
	mu      sync.Mutex
	since   time.Time            // when this node last became leader; zero when it is not
	term    uint64               // the raft term it leads in
	last    map[string]time.Time // node → when the leader last answered its rpcIndex
	revoked map[string]int       // nodes whose promotion away is being committed
}

// leading records a change of raft leadership of this node, seen at now
// in raft term term.
func (a *affirmations) leading(leader bool, term uint64, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last = map[string]time.Time{}
	a.since, a.term = time.Time{}, 0
	if leader {
		a.since, a.term = now, term
	}
}

// answer records that the leader answers node's rpcIndex now; false when
// the node is losing an app and must not renew its lease.
func (a *affirmations) answer(node string, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.revoked[node] > 0 {
		return false
	}
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	a.last[node] = now
	return true
}

// leaseMargin covers clock rate differences and scheduling between the
// leader's answer and the OP's renewal.
func leaseMargin(lease time.Duration) time.Duration { return lease/20 + 10*time.Millisecond }

// revoke stops answering op until release is called, and returns how long
// op's lease may still run, at most a lease plus the margin. term is the
// raft term now: leadership not recorded for it (a change not yet seen)
// means the whole lease.
func (a *affirmations) revoke(op string, lease time.Duration, term uint64, now time.Time) (wait time.Duration, release func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.revoked == nil {
		a.revoked = map[string]int{}
	}
	a.revoked[op]++
	release = func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.revoked[op]--; a.revoked[op] <= 0 {
			delete(a.revoked, op)
		}
	}
	full := lease + leaseMargin(lease)
	if a.since.IsZero() || a.term != term {
		return full, release
	}
	from := a.since
	if last := a.last[op]; last.After(from) {
		from = last
	}
	return min(full, max(0, from.Add(full).Sub(now))), release
}
