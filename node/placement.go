package node

import (
	"errors"
	"fmt"
	"sort"
)

// ErrNoPlacement means no node can take the role asked for.
var ErrNoPlacement = errors.New("no node can host it")

// Candidate is what placement knows about a node.
type Candidate struct {
	Name    string
	Worker  bool // role worker (witnesses host nothing)
	Alive   bool
	Drained bool
	MemFree uint64
	// Priority breaks ties before free memory: higher first.
	Priority int
}

func (c Candidate) hostable() bool { return c.Worker && c.Alive && !c.Drained }

// ChooseOP picks the node an app runs on: preferred when it can host apps,
// else the hostable node with the most free memory. The reason says why
// preferred was passed over.
func ChooseOP(preferred string, cands []Candidate) (string, error) {
	var reason string
	for _, c := range cands {
		if c.Name != preferred {
			continue
		}
		switch {
		case !c.Worker:
			reason = preferred + " is a witness"
		case !c.Alive:
			reason = preferred + " is not alive"
		case c.Drained:
			reason = preferred + " is drained"
		default:
			return preferred, nil
		}
	}
	best := rank(cands, nil)
	if len(best) == 0 {
		if reason == "" {
			reason = "no alive, undrained worker"
		}
		return "", fmt.Errorf("%w: %s", ErrNoPlacement, reason)
	}
	return best[0], nil
}

// PlaceClones returns the clone set of an app: the current clones that are
// still hostable (so a healthy clone is never moved), topped up to want with
// the hostable nodes that have the most free memory, never the OP. It may
// return fewer than want when the cluster is too small; the caller reports
// that.
func PlaceClones(op string, want int, current []string, cands []Candidate) []string {
	byName := map[string]Candidate{}
	for _, c := range cands {
		byName[c.Name] = c
	}
	out := []string{}
	taken := map[string]bool{op: true}
	for _, n := range current {
		if len(out) == want {
			break
		}
		if c, ok := byName[n]; ok && c.hostable() && !taken[n] {
			out = append(out, n)
			taken[n] = true
		}
	}
	for _, n := range rank(cands, taken) {
		if len(out) == want {
			break
		}
		out = append(out, n)
		taken[n] = true
	}
	return out
}

// rank lists hostable nodes not in skip, best first: priority, then free
// memory, then name for a stable order.
func rank(cands []Candidate, skip map[string]bool) []string {
	var ok []Candidate
	for _, c := range cands {
		if c.hostable() && !skip[c.Name] {
			ok = append(ok, c)
		}
	}
	sort.Slice(ok, func(i, j int) bool {
		if ok[i].Priority != ok[j].Priority {
			return ok[i].Priority > ok[j].Priority
		}
		if ok[i].MemFree != ok[j].MemFree {
			return ok[i].MemFree > ok[j].MemFree
		}
		return ok[i].Name < ok[j].Name
	})
	names := make([]string, len(ok))
	for i, c := range ok {
		names[i] = c.Name
	}
	return names
}
