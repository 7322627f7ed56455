package failover

import (
	"fmt"
	"math"
	"sort"
	"sync"
	"time"
)

// BalanceConfig tunes the balancer. Loads are per node, 0 idle, 1 full
// (CPU load per core or memory pressure, whichever is higher).
type BalanceConfig struct {
	// High is the load above which a node is hot; Low the load under which
	// a node may take an app. The gap between them is the hysteresis.
	High, Low float64
	// Window is how long a node must stay hot before anything moves.
	Window time.Duration
	// MinInterval is the least time between two moves of one app.
	MinInterval time.Duration
}

// DefaultBalanceConfig moves an app off a node hot (>80%) for a minute to
// one under 50%, each app at most every 10 minutes.
func DefaultBalanceConfig() BalanceConfig {
	return BalanceConfig{High: 0.8, Low: 0.5, Window: time.Minute, MinInterval: 10 * time.Minute}
}

// NodeLoad is a node's load as the balancer sees it.
type NodeLoad struct {
	Name string
	Load float64
	// Hostable: an alive, undrained worker.
	Hostable bool
}

// AppLoad is an app as the balancer sees it.
type AppLoad struct {
	Name string
	OP   string
	// Share is the part of its OP's load the app accounts for.
	Share float64
	// Clones are preferred targets: only the last delta crosses the wire.
	Clones []string
}

// Move is a relocation the balancer decided.
type Move struct {
	App, From, To string
	Reason        string
}

// Balancer decides, from loads observed over time, which app to move so
// that load evens out, with hysteresis: a node must stay hot for a window,
// the target must be cool and stay under the high mark after the move,
// and an app moves at most once per MinInterval. Safe for concurrent use.
type Balancer struct {
	cfg       BalanceConfig
	mu        sync.Mutex
	hotSince  map[string]time.Time
	lastMoved map[string]time.Time
}

// NewBalancer returns a balancer with no history.
func NewBalancer(cfg BalanceConfig) *Balancer {
	return &Balancer{cfg: cfg, hotSince: map[string]time.Time{}, lastMoved: map[string]time.Time{}}
}

// Plan records the loads seen at now and returns the move to make, or nil
// and the reason for none.
func (b *Balancer) Plan(nodes []NodeLoad, apps []AppLoad, now time.Time) (*Move, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	loads := map[string]NodeLoad{}
	for _, n := range nodes {
		loads[n.Name] = n
		if n.Load > b.cfg.High {
			if _, ok := b.hotSince[n.Name]; !ok {
				b.hotSince[n.Name] = now
			}
		} else {
			delete(b.hotSince, n.Name)
		}
	}
	var hot []NodeLoad
	for _, n := range nodes {
		if since, ok := b.hotSince[n.Name]; ok && now.Sub(since) >= b.cfg.Window {
			hot = append(hot, n)
		}
	}
	if len(hot) == 0 {
		if len(b.hotSince) > 0 {
			return nil, fmt.Sprintf("a node is above %.0f%% but not yet for %s", b.cfg.High*100, b.cfg.Window)
		}
		return nil, fmt.Sprintf("no node above %.0f%%", b.cfg.High*100)
	}
	sort.Slice(hot, func(i, j int) bool { return hot[i].Load > hot[j].Load })
	var best *Move
	bestSpread := math.Inf(1)
	for _, h := range hot {
		for _, a := range apps {
			if a.OP != h.Name {
				continue
			}
			if t, ok := b.lastMoved[a.Name]; ok && now.Sub(t) < b.cfg.MinInterval {
				continue
			}
			for _, to := range nodes {
				if to.Name == h.Name || !to.Hostable || to.Load >= b.cfg.Low {
					continue
				}
				newFrom, newTo := h.Load-a.Share, to.Load+a.Share
				if newTo > b.cfg.High {
					continue // the move would make the target hot
				}
				spread := math.Abs(newFrom - newTo)
				if isClone(a, to.Name) {
					spread -= 1e-9 // a clone wins a tie: only the delta moves
				}
				if spread < bestSpread {
					bestSpread = spread
					best = &Move{App: a.Name, From: h.Name, To: to.Name, Reason: fmt.Sprintf(
						"%s at %.0f%% for %s, %s at %.0f%%: moving %s (about %.0f%%) leaves %.0f%% and %.0f%%",
						h.Name, h.Load*100, now.Sub(b.hotSince[h.Name]).Round(time.Second), to.Name, to.Load*100,
						a.Name, a.Share*100, newFrom*100, newTo*100)}
				}
			}
		}
		if best != nil {
			break
		}
	}
	if best == nil {
		return nil, fmt.Sprintf("%s is hot but no app can move: no node under %.0f%% that stays under %.0f%%, or every app moved less than %s ago",
			hot[0].Name, b.cfg.Low*100, b.cfg.High*100, b.cfg.MinInterval)
	}
	return best, best.Reason
}

// Preview returns what Plan would decide at now, without recording the
// loads (a dry run).
func (b *Balancer) Preview(nodes []NodeLoad, apps []AppLoad, now time.Time) (*Move, string) {
	b.mu.Lock()
	cp := &Balancer{cfg: b.cfg, hotSince: map[string]time.Time{}, lastMoved: map[string]time.Time{}}
	for k, v := range b.hotSince {
		cp.hotSince[k] = v
	}
	for k, v := range b.lastMoved {
		cp.lastMoved[k] = v
	}
	b.mu.Unlock()
	return cp.Plan(nodes, apps, now)
}

// Moved records that a move happened, so that the app and both nodes wait
// before the next one.
func (b *Balancer) Moved(m Move, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastMoved[m.App] = now
	delete(b.hotSince, m.From)
	delete(b.hotSince, m.To)
}

func isClone(a AppLoad, node string) bool {
	for _, c := range a.Clones {
		if c == node {
			return true
		}
	}
	return false
}
