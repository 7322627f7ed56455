package bench

import (
	"fmt"
	"math"
	"time"
)

// Rates are a host's measured speeds, the inputs of Recommend. Rates are
// bytes per second; zero means unknown.
type Rates struct {
	// FreezeFixed is the part of an epoch's freeze that does not grow with
	// the app's memory (barrier, resource scan, CRIU's own setup), and
	// DumpRate the memory CRIU captures per second while the app is
	// frozen. Without soft-dirty tracking CRIU dumps every page at every
	// epoch, so the freeze grows with the app's size, not with its writes.
	FreezeFixed time.Duration
	DumpRate    float64
	// Hash is the store's content hash over all cores: every dumped page
	// is hashed at every epoch (the content-based page delta).
	Hash float64
	// LZ4 is the wire's compression over all cores, LZ4Ratio compressed
	// over raw size: only changed pages are compressed and sent.
	LZ4      float64
	LZ4Ratio float64
	// Disk is fsynced writes to the store: changed pages are written.
	Disk float64
	// Link is the transfer rate to the clones (shared by all of them: the
	// node's transfer.rate_limit or the network); 0 when unknown, and the
	// network is then left out.
	Link float64
}

// Rates derives Rates from the report; link is the transfer rate to the
// clones in bytes per second (0 unknown). The freeze is split into CRIU's
// memdump_time, which grows with the memory (DumpRate), and the rest
// (FreezeFixed). Hashing and compression take the better of the one-core
// and all-core timings: on a busy host more workers can be slower.
func (r *Report) Rates(link float64) Rates {
	c := r.Checkpoint
	mem := c.MemDump.D()
	if mem <= 0 {
		mem = c.CRIUFrozen.D()
	}
	return Rates{
		FreezeFixed: max(c.Freeze.D()-mem, 0),
		DumpRate:    r.DumpRate(),
		Hash:        max(r.Hash.AllCores, r.Hash.OneCore),
		LZ4:         max(r.LZ4.AllCores, r.LZ4.OneCore),
		LZ4Ratio:    r.LZ4Ratio,
		Disk:        r.Disk,
		Link:        link,
	}
}

// Workload is the app a recommendation is for.
type Workload struct {
	// AppSize is its resident memory in bytes.
	AppSize int64
	// DirtyRate is the fraction of its pages it rewrites per second
	// (0.01 = 1%/s), spread at random.
	DirtyRate float64
	// Workers is the number of nodes that can host it or a clone; 0 when
	// unknown.
	Workers int
}

// Policy bounds what checkpointing may cost the app and the node.
type Policy struct {
	// MaxFreezeShare is the largest fraction of time the app may be
	// stopped by epochs.
	MaxFreezeShare float64
	// MaxCPUShare is the largest fraction of the node's CPU (all cores)
	// that hashing and compressing may take.
	MaxCPUShare float64
	// MaxDiskShare and MaxLinkShare are the largest fractions of the
	// interval spent writing the store and sending to the clones: the
	// rest is headroom so that clones keep up after a burst.
	MaxDiskShare float64
	MaxLinkShare float64
	// Replicas is the number of clones wanted when the budget allows:
	// two keep one clone while another node is down or drained.
	Replicas int
	// Intervals are the candidate intervals, shortest first.
	Intervals []time.Duration
}

// DefaultPolicy: the app stopped at most 5% of the time, a quarter of the
// CPU, half of the disk and of the link, two clones, intervals from 1 s to
// 10 min.
func DefaultPolicy() Policy {
	return Policy{
		MaxFreezeShare: 0.05,
		MaxCPUShare:    0.25,
		MaxDiskShare:   0.5,
		MaxLinkShare:   0.5,
		Replicas:       2,
		Intervals: []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second,
			15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute},
	}
}

// Cost names what an epoch spends time on.
type Cost string

const (
	CostFreeze   Cost = "freeze"      // the app stopped while CRIU dumps it
	CostHash     Cost = "hashing"     // hashing every dumped page
	CostCompress Cost = "compression" // LZ4 of the changed pages
	CostDisk     Cost = "disk"        // writing the changed pages to the store
	CostNetwork  Cost = "network"     // sending them to every clone
)

// EpochCost is one cost of an epoch and the share of the interval it takes
// against its budget (1 = the whole budget).
type EpochCost struct {
	Cost   Cost          `json:"cost"`
	Time   time.Duration `json:"time_ns"`
	Budget float64       `json:"budget_used"`
}

// Recommendation is Recommend's answer.
type Recommendation struct {
	Interval time.Duration `json:"interval_ns"`
	Replicas int           `json:"replicas"`
	// Costs are one epoch's costs at Interval with Replicas clones, in
	// the order of the Cost constants; Dominant is the longest of them,
	// LimitedBy the one closest to its budget (what sets the interval).
	Costs     []EpochCost `json:"costs"`
	Dominant  Cost        `json:"dominant"`
	LimitedBy Cost        `json:"limited_by"`
	// ChangedBytes are the pages changed in one interval (what is
	// hashed as new, stored and sent); WireBytes what goes to each clone.
	ChangedBytes int64 `json:"changed_bytes"`
	WireBytes    int64 `json:"wire_bytes"`
	// Feasible is false when even the longest candidate interval breaks
	// a budget; Interval is then the longest.
	Feasible bool     `json:"feasible"`
	Notes    []string `json:"notes,omitempty"`
}

// Recommend picks the shortest candidate interval at which one epoch of
// the workload fits every budget of the policy, and the number of clones:
// the policy's, fewer when the cluster is smaller (Workers-1) or when one
// clone less allows a shorter interval (the link is shared by the clones).
// It is a pure function of its inputs.
func Recommend(r Rates, w Workload, p Policy) Recommendation {
	want := max(p.Replicas, 1)
	if w.Workers > 0 {
		want = max(min(want, w.Workers-1), 0)
	}
	best := pickInterval(r, w, p, want)
	var notes []string
	if want > 1 {
		fewer := pickInterval(r, w, p, want-1)
		if fewer.Feasible && (!best.Feasible || fewer.Interval < best.Interval) {
			how := "no candidate interval fits the link"
			if best.Feasible {
				how = fmt.Sprintf("they need an interval of %v", best.Interval)
			}
			notes = append(notes, fmt.Sprintf("%d clones would share the link: %s; %d clone(s) allow %v", want, how, want-1, fewer.Interval))
			best = fewer
		}
	}
	if w.Workers > 0 && w.Workers < 2 {
		notes = append(notes, "a single worker node holds no clone: add nodes for failover")
	} else if best.Replicas < 2 {
		notes = append(notes, "with one clone, an app whose clone node is down has no stand-by until it is re-placed")
	}
	if r.Link <= 0 {
		notes = append(notes, "transfer rate to the clones unknown: the network is not accounted (give the link rate)")
	}
	if !best.Feasible {
		notes = append(notes, fmt.Sprintf("even %v breaks the %s budget: the app is too large or writes too fast for this host", best.Interval, best.LimitedBy))
	}
	best.Notes = append(notes, best.Notes...)
	return best
}

// pickInterval returns the recommendation for a fixed number of clones.
func pickInterval(r Rates, w Workload, p Policy, replicas int) Recommendation {
	var rec Recommendation
	for _, t := range p.Intervals {
		rec = evaluate(r, w, p, replicas, t)
		if rec.Feasible {
			return rec
		}
	}
	return rec
}

// evaluate costs one epoch every t with replicas clones.
func evaluate(r Rates, w Workload, p Policy, replicas int, t time.Duration) Recommendation {
	size := float64(w.AppSize)
	d := min(max(w.DirtyRate, 0), 1)
	changed := size * (1 - math.Pow(1-d, t.Seconds()))
	wire := changed
	if r.LZ4Ratio > 0 {
		wire = changed * r.LZ4Ratio
	}
	secs := func(bytes, rate float64) time.Duration {
		if rate <= 0 || bytes <= 0 {
			return 0
		}
		return time.Duration(bytes / rate * float64(time.Second))
	}
	share := func(x time.Duration, limit float64) float64 {
		if limit <= 0 {
			return 0
		}
		return x.Seconds() / t.Seconds() / limit
	}
	freeze := r.FreezeFixed + secs(size, r.DumpRate)
	hash := secs(size, r.Hash)
	comp := secs(changed, r.LZ4)
	disk := secs(changed, r.Disk)
	net := secs(wire*float64(replicas), r.Link)
	cpu := share(hash+comp, p.MaxCPUShare)
	costs := []EpochCost{
		{CostFreeze, freeze, share(freeze, p.MaxFreezeShare)},
		{CostHash, hash, cpu},
		{CostCompress, comp, cpu},
		{CostDisk, disk, share(disk, p.MaxDiskShare)},
		{CostNetwork, net, share(net, p.MaxLinkShare)},
	}
	rec := Recommendation{Interval: t, Replicas: replicas, Costs: costs,
		ChangedBytes: int64(changed), WireBytes: int64(wire), Feasible: true}
	var longest, worstTime time.Duration
	worst := -1.0
	for _, c := range costs {
		if c.Time > longest {
			longest, rec.Dominant = c.Time, c.Cost
		}
		// Hashing and compression share the CPU budget: the longer one
		// is named.
		if c.Budget > worst || (c.Budget == worst && c.Time > worstTime) {
			worst, worstTime, rec.LimitedBy = c.Budget, c.Time, c.Cost
		}
		if c.Budget > 1 {
			rec.Feasible = false
		}
	}
	if rec.Dominant == "" {
		rec.Dominant = CostFreeze
	}
	return rec
}
