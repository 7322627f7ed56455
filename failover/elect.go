package failover

import (
	"errors"
	"fmt"
	"sort"
)

// ErrNoCandidate means no clone can take over.
var ErrNoCandidate = errors.New("no clone can take over")

// Candidate is a clone of an app as the election sees it.
type Candidate struct {
	Node string
	// Acked is the newest epoch the clone acknowledged in the app's
	// current term (0: none).
	Acked uint64
	// Alive, Worker and Drained come from membership and cluster state.
	Alive, Worker, Drained bool
	// Priority is the operator's preference: higher first.
	Priority int
	MemFree  uint64
}

// Elect picks the clone to promote when an app's OP is lost: an alive,
// undrained worker holding the newest acknowledged epoch; ties are broken by
// priority, then by free memory, then by name. The reason says why.
func Elect(cands []Candidate) (Candidate, string, error) {
	var ok []Candidate
	var refused []string
	for _, c := range cands {
		switch {
		case !c.Alive:
			refused = append(refused, c.Node+" is not alive")
		case !c.Worker:
			refused = append(refused, c.Node+" is a witness")
		case c.Drained:
			refused = append(refused, c.Node+" is drained")
		case c.Acked == 0:
			refused = append(refused, c.Node+" holds no acknowledged epoch")
		default:
			ok = append(ok, c)
		}
	}
	if len(ok) == 0 {
		if len(refused) == 0 {
			return Candidate{}, "", fmt.Errorf("%w: the app has no clone", ErrNoCandidate)
		}
		return Candidate{}, "", fmt.Errorf("%w: %v", ErrNoCandidate, refused)
	}
	sort.Slice(ok, func(i, j int) bool {
		a, b := ok[i], ok[j]
		if a.Acked != b.Acked {
			return a.Acked > b.Acked
		}
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if a.MemFree != b.MemFree {
			return a.MemFree > b.MemFree
		}
		return a.Node < b.Node
	})
	w := ok[0]
	reason := fmt.Sprintf("%s holds epoch %d", w.Node, w.Acked)
	if len(ok) > 1 && ok[1].Acked == w.Acked {
		reason += fmt.Sprintf(" like %s; chosen by priority %d, then %d MiB free", ok[1].Node, w.Priority, w.MemFree>>20)
	}
	return w, reason, nil
}
