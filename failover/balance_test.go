package failover

import (
	"testing"
	"time"
)

func TestBalancerOneMoveThenNone(t *testing.T) {
	cfg := BalanceConfig{High: 0.8, Low: 0.5, Window: 30 * time.Second, MinInterval: 10 * time.Minute}
	b := NewBalancer(cfg)
	t0 := time.Unix(1000, 0)
	skew := []NodeLoad{{"a", 0.95, true}, {"b", 0.10, true}, {"c", 0.45, true}}
	apps := []AppLoad{
		{Name: "x", OP: "a", Share: 0.40, Clones: []string{"c"}},
		{Name: "y", OP: "a", Share: 0.30, Clones: []string{"b"}},
		{Name: "z", OP: "c", Share: 0.40},
	}
	// Hot, but not yet for the window: nothing moves.
	if m, why := b.Plan(skew, apps, t0); m != nil || why == "" {
		t.Fatalf("before the window: %+v %q", m, why)
	}
	if m, _ := b.Plan(skew, apps, t0.Add(10*time.Second)); m != nil {
		t.Fatalf("inside the window: %+v", m)
	}
	m, why := b.Plan(skew, apps, t0.Add(31*time.Second))
	if m == nil {
		t.Fatalf("after the window: no move (%s)", why)
	}
	// Moving x (0.40) to b evens a and b best: 0.55 / 0.50.
	if m.App != "x" || m.From != "a" || m.To != "b" {
		t.Fatalf("move = %+v", m)
	}
	b.Moved(*m, t0.Add(31*time.Second))
	balanced := []NodeLoad{{"a", 0.55, true}, {"b", 0.50, true}, {"c", 0.45, true}}
	apps[0].OP = "b"
	for i := 0; i < 10; i++ {
		if m, _ := b.Plan(balanced, apps, t0.Add(time.Duration(40+i*30)*time.Second)); m != nil {
			t.Fatalf("balanced cluster moved %+v", m)
		}
	}
}

func TestBalancerNoPingPong(t *testing.T) {
	b := NewBalancer(BalanceConfig{High: 0.8, Low: 0.5, Window: 0, MinInterval: time.Hour})
	now := time.Unix(0, 0)
	apps := []AppLoad{{Name: "x", OP: "a", Share: 0.5}}
	m, _ := b.Plan([]NodeLoad{{"a", 0.9, true}, {"b", 0.1, true}}, apps, now)
	if m == nil || m.To != "b" {
		t.Fatalf("first move: %+v", m)
	}
	b.Moved(*m, now)
	apps[0].OP = "b"
	// b is now hot in turn: x moved less than an hour ago, so it stays.
	if m, _ := b.Plan([]NodeLoad{{"a", 0.2, true}, {"b", 0.9, true}}, apps, now.Add(time.Minute)); m != nil {
		t.Fatalf("ping-pong: %+v", m)
	}
}

func TestBalancerRespectsTargets(t *testing.T) {
	b := NewBalancer(BalanceConfig{High: 0.8, Low: 0.5, Window: 0})
	now := time.Unix(0, 0)
	apps := []AppLoad{{Name: "big", OP: "a", Share: 0.8}}
	// The only cool node would become hot; a drained node is never a target.
	nodes := []NodeLoad{{"a", 0.95, true}, {"b", 0.3, true}, {"d", 0.0, false}}
	if m, why := b.Plan(nodes, apps, now); m != nil || why == "" {
		t.Fatalf("move into a hot target: %+v", m)
	}
}
