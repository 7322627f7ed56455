package failover

import (
	"errors"
	"testing"
)

func TestElect(t *testing.T) {
	base := func(n string, acked uint64) Candidate {
		return Candidate{Node: n, Acked: acked, Alive: true, Worker: true, MemFree: 1 << 30}
	}
	cases := []struct {
		name  string
		cands []Candidate
		want  string
	}{
		{"newest epoch wins", []Candidate{base("a", 5), base("b", 7), base("c", 6)}, "b"},
		{"priority breaks a tie", []Candidate{base("a", 7), func() Candidate { c := base("b", 7); c.Priority = 1; return c }()}, "b"},
		{"memory breaks a tie", []Candidate{base("a", 7), func() Candidate { c := base("b", 7); c.MemFree = 2 << 30; return c }()}, "b"},
		{"name breaks the rest", []Candidate{base("b", 7), base("a", 7)}, "a"},
		{"dead, drained and witness skipped", []Candidate{
			func() Candidate { c := base("a", 9); c.Alive = false; return c }(),
			func() Candidate { c := base("b", 9); c.Drained = true; return c }(),
			func() Candidate { c := base("w", 9); c.Worker = false; return c }(),
			base("c", 3)}, "c"},
	}
	for _, tc := range cases {
		got, reason, err := Elect(tc.cands)
		if err != nil || got.Node != tc.want || reason == "" {
			t.Errorf("%s: Elect = %q (%s), %v; want %q", tc.name, got.Node, reason, err, tc.want)
		}
	}
	if _, _, err := Elect([]Candidate{base("a", 0)}); !errors.Is(err, ErrNoCandidate) {
		t.Errorf("no acked epoch: %v", err)
	}
	if _, _, err := Elect(nil); !errors.Is(err, ErrNoCandidate) {
		t.Errorf("no clones: %v", err)
	}
}
