package node

import (
	"sync"
	"time"

	"doppel/node/api"
)

// cloneHealth tracks, on the OP, how one clone keeps up.
type cloneHealth struct {
	Acked     uint64
	AckedAt   time.Time
	BytesSent int64
	LastError string
	ErrorAt   time.Time
	Sending   uint64 // epoch in flight, 0 when idle
}

// healthBook holds the clone health of the apps this node runs. Safe for
// concurrent use.
type healthBook struct {
	mu   sync.Mutex
	apps map[string]map[string]*cloneHealth // app -> clone node -> health
}

func newHealthBook() *healthBook {
	return &healthBook{apps: map[string]map[string]*cloneHealth{}}
}

func (b *healthBook) get(app, clone string) *cloneHealth {
	m := b.apps[app]
	if m == nil {
		m = map[string]*cloneHealth{}
		b.apps[app] = m
	}
	h := m[clone]
	if h == nil {
		h = &cloneHealth{}
		m[clone] = h
	}
	return h
}

func (b *healthBook) sending(app, clone string, epoch uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.get(app, clone).Sending = epoch
}

func (b *healthBook) acked(app, clone string, epoch uint64, bytes int64, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.get(app, clone)
	if epoch > h.Acked {
		h.Acked, h.AckedAt = epoch, at
	}
	h.BytesSent += bytes
	h.Sending = 0
	h.LastError = ""
}

func (b *healthBook) failed(app, clone string, err error, bytes int64, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.get(app, clone)
	h.BytesSent += bytes
	h.Sending = 0
	h.LastError = err.Error()
	h.ErrorAt = at
}

// ackedEpoch is the newest epoch a clone acknowledged.
func (b *healthBook) ackedEpoch(app, clone string) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.get(app, clone).Acked
}

// forget drops clones no longer in the app's set (or the whole app when
// keep is nil).
func (b *healthBook) forget(app string, keep []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if keep == nil {
		delete(b.apps, app)
		return
	}
	m := b.apps[app]
	for n := range m {
		found := false
		for _, k := range keep {
			found = found || k == n
		}
		if !found {
			delete(m, n)
		}
	}
}

// view computes a clone's state against the app's newest epoch (taken at
// newestAt) and its checkpoint interval: syncing until the first
// acknowledgement; in-sync while at most the newest epoch is in flight and
// acknowledgements keep coming; lagging beyond that; failed when the last
// transfer failed and nothing was acknowledged since.
func (b *healthBook) view(app, clone string, newest uint64, newestAt time.Time, interval time.Duration, now time.Time) api.CloneInfo {
	b.mu.Lock()
	h := *b.get(app, clone)
	b.mu.Unlock()
	v := api.CloneInfo{Node: clone, AckedEpoch: h.Acked, BytesSent: h.BytesSent, LastError: h.LastError, LastAck: h.AckedAt}
	if newest > h.Acked {
		v.LagEpochs = newest - h.Acked
	}
	if v.LagEpochs > 0 && !newestAt.IsZero() {
		// Lag in seconds: how old the clone's state is compared to the
		// newest epoch, approximated by the epochs it misses.
		v.LagSeconds = (time.Duration(v.LagEpochs) * interval).Seconds()
		if h.Acked == 0 {
			v.LagSeconds = now.Sub(newestAt).Seconds()
		}
	}
	switch {
	case h.LastError != "" && h.ErrorAt.After(h.AckedAt):
		v.State = api.CloneFailed
	case h.Acked == 0:
		v.State = api.CloneSyncing
	case v.LagEpochs <= 1 && now.Sub(h.AckedAt) <= 3*interval+time.Second:
		v.State = api.CloneInSync
	default:
		v.State = api.CloneLagging
	}
	return v
}
