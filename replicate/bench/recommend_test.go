package bench

import (
	"math"
	"strings"
	"testing"
	"time"
)

// fastHost is a host where nothing but what a test slows down matters.
func fastHost() Rates {
	return Rates{
		FreezeFixed: 20 * time.Millisecond,
		DumpRate:    4 << 30,
		Hash:        8 << 30,
		LZ4:         2 << 30,
		LZ4Ratio:    0.5,
		Disk:        2 << 30,
		Link:        10e9 / 8,
	}
}

func cost(r Recommendation, c Cost) EpochCost {
	for _, x := range r.Costs {
		if x.Cost == c {
			return x
		}
	}
	return EpochCost{}
}

func hasNote(r Recommendation, sub string) bool {
	for _, n := range r.Notes {
		if strings.Contains(n, sub) {
			return true
		}
	}
	return false
}

func TestRecommendSmallAppShortestInterval(t *testing.T) {
	r := Recommend(fastHost(), Workload{AppSize: 64 << 20, DirtyRate: 0.01, Workers: 3}, DefaultPolicy())
	if r.Interval != time.Second || r.Replicas != 2 || !r.Feasible {
		t.Fatalf("got interval %v replicas %d feasible %v, want 1s, 2, true", r.Interval, r.Replicas, r.Feasible)
	}
	// 20 ms fixed + 64 MiB at 4 GiB/s = 35.6 ms of freeze per epoch.
	want := 20*time.Millisecond + time.Duration(float64(64<<20)/float64(4<<30)*float64(time.Second))
	if got := cost(r, CostFreeze).Time; got != want {
		t.Errorf("freeze %v, want %v", got, want)
	}
	if r.Dominant != CostFreeze || r.LimitedBy != CostFreeze {
		t.Errorf("dominant %s, limited by %s; want freeze, freeze", r.Dominant, r.LimitedBy)
	}
}

func TestRecommendFreezeSetsInterval(t *testing.T) {
	h := fastHost()
	h.DumpRate = 1 << 30 // 1 GiB/s: an 8 GiB app freezes for 8.02 s
	p := DefaultPolicy()
	r := Recommend(h, Workload{AppSize: 8 << 30, DirtyRate: 0.001, Workers: 5}, p)
	// 8.02 s must be at most 5% of the interval: 160.4 s, so 5 min.
	if r.Interval != 5*time.Minute {
		t.Fatalf("interval %v, want 5m0s (costs %+v)", r.Interval, r.Costs)
	}
	if r.LimitedBy != CostFreeze || r.Dominant != CostFreeze {
		t.Errorf("limited by %s, dominant %s; want freeze", r.LimitedBy, r.Dominant)
	}
	// The interval before it must break the freeze budget: it is the
	// shortest that fits.
	prev := evaluate(h, Workload{AppSize: 8 << 30, DirtyRate: 0.001}, p, 2, 2*time.Minute)
	if prev.Feasible {
		t.Errorf("2m0s fits too: %+v", prev.Costs)
	}
}

func TestRecommendChangedBytes(t *testing.T) {
	h := fastHost()
	h.DumpRate = 256 << 20 // 1 GiB: 4 s of freeze, interval 2 min
	r := Recommend(h, Workload{AppSize: 1 << 30, DirtyRate: 0.01, Workers: 3}, DefaultPolicy())
	if r.Interval != 2*time.Minute {
		t.Fatalf("interval %v, want 2m0s", r.Interval)
	}
	// Pages dirtied at random at 1%/s: after 120 s, 1-0.99^120 of them.
	want := float64(1<<30) * (1 - math.Pow(0.99, 120))
	if math.Abs(float64(r.ChangedBytes)-want) > 1 {
		t.Errorf("changed %d, want %.0f", r.ChangedBytes, want)
	}
	if math.Abs(float64(r.WireBytes)-want*0.5) > 1 {
		t.Errorf("wire %d, want %.0f (LZ4 ratio 0.5)", r.WireBytes, want*0.5)
	}
}

func TestRecommendSlowLinkDropsAClone(t *testing.T) {
	h := fastHost()
	h.Link = 10e6 / 8 // 10 Mbit/s
	// 256 MiB at 10%/s: 1 s changes 25.6 MiB, 12.8 MiB on the wire per
	// clone; 2 clones need 21 s of link per epoch at 1 s, one clone
	// fits only at a longer interval too; find what each allows.
	w := Workload{AppSize: 256 << 20, DirtyRate: 0.1, Workers: 3}
	p := DefaultPolicy()
	two, one := pickInterval(h, w, p, 2), pickInterval(h, w, p, 1)
	if !one.Feasible || (two.Feasible && two.Interval <= one.Interval) {
		t.Fatalf("test setup: one clone %v (feasible %v), two clones %v (feasible %v)", one.Interval, one.Feasible, two.Interval, two.Feasible)
	}
	r := Recommend(h, w, p)
	if r.Replicas != 1 || r.Interval != one.Interval {
		t.Fatalf("got %d clone(s) at %v, want 1 at %v", r.Replicas, r.Interval, one.Interval)
	}
	if r.LimitedBy != CostNetwork || r.Dominant != CostNetwork {
		t.Errorf("limited by %s, dominant %s; want network", r.LimitedBy, r.Dominant)
	}
	if !hasNote(r, "share the link") {
		t.Errorf("no note about the shared link: %q", r.Notes)
	}
}

func TestRecommendClonesCappedByWorkers(t *testing.T) {
	for workers, want := range map[int]int{0: 2, 1: 0, 2: 1, 3: 2, 10: 2} {
		r := Recommend(fastHost(), Workload{AppSize: 64 << 20, DirtyRate: 0.01, Workers: workers}, DefaultPolicy())
		if r.Replicas != want {
			t.Errorf("%d workers: %d clones, want %d", workers, r.Replicas, want)
		}
		if workers == 1 && !hasNote(r, "single worker") {
			t.Errorf("1 worker: no note about failover: %q", r.Notes)
		}
	}
}

func TestRecommendUnknownLink(t *testing.T) {
	h := fastHost()
	h.Link = 0
	r := Recommend(h, Workload{AppSize: 64 << 20, DirtyRate: 0.5}, DefaultPolicy())
	if c := cost(r, CostNetwork); c.Time != 0 || c.Budget != 0 {
		t.Errorf("network cost %+v with an unknown link, want none", c)
	}
	if !hasNote(r, "unknown") {
		t.Errorf("no note about the unknown link: %q", r.Notes)
	}
}

func TestRecommendInfeasible(t *testing.T) {
	h := fastHost()
	h.DumpRate = 1 << 20 // 1 MiB/s: 64 GiB take 18 hours to dump
	p := DefaultPolicy()
	r := Recommend(h, Workload{AppSize: 64 << 30, DirtyRate: 0.01, Workers: 3}, p)
	if r.Feasible || r.Interval != p.Intervals[len(p.Intervals)-1] {
		t.Fatalf("feasible %v at %v, want the longest interval and not feasible", r.Feasible, r.Interval)
	}
	if !hasNote(r, "too large") {
		t.Errorf("no note about the app being too large: %q", r.Notes)
	}
}

func TestRecommendCPUBudget(t *testing.T) {
	h := fastHost()
	h.Hash = 64 << 20 // 64 MiB/s: a 1 GiB app takes 16 s to hash
	r := Recommend(h, Workload{AppSize: 1 << 30, DirtyRate: 0.001, Workers: 3}, DefaultPolicy())
	// 16 s at most 25% of the interval: 64 s, so 2 min.
	if r.Interval != 2*time.Minute || r.LimitedBy != CostHash || r.Dominant != CostHash {
		t.Fatalf("interval %v limited by %s dominant %s, want 2m0s by hashing (costs %+v)", r.Interval, r.LimitedBy, r.Dominant, r.Costs)
	}
}

func TestReportRates(t *testing.T) {
	rep := &Report{Size: 512 << 20, Hash: Throughput{OneCore: 3e9, AllCores: 2e9}, LZ4: Throughput{OneCore: 4e8, AllCores: 7e8}, LZ4Ratio: 0.56, Disk: 1e9}
	rep.Checkpoint.Freeze = Millis(1200 * time.Millisecond)
	rep.Checkpoint.CRIUFrozen = Millis(1100 * time.Millisecond)
	rep.Checkpoint.MemDump = Millis(time.Second)
	r := rep.Rates(125e6)
	if r.FreezeFixed != 200*time.Millisecond || r.DumpRate != 512<<20 {
		t.Errorf("freeze fixed %v, dump rate %.0f; want 200ms, %d", r.FreezeFixed, r.DumpRate, 512<<20)
	}
	if r.Hash != 3e9 || r.LZ4 != 7e8 || r.Link != 125e6 || r.Disk != 1e9 || r.LZ4Ratio != 0.56 {
		t.Errorf("rates %+v", r)
	}
}
