package node

import (
	"context"
	"sync"
	"time"

	"doppel/node/api"
)

// eventBus fans the node's events out to API subscribers and keeps the
// most recent ones so that a new subscriber (the TUI) starts with context.
// Publishing never blocks: a subscriber that does not keep up loses events
// and the loss is counted.
type eventBus struct {
	mu      sync.Mutex
	seq     uint64
	recent  []api.Event // ring of the newest events, oldest first
	keep    int
	subs    map[chan api.Event]struct{}
	dropped uint64
}

func newEventBus(keep int) *eventBus {
	return &eventBus{keep: keep, subs: map[chan api.Event]struct{}{}}
}

// publish stamps ev with a sequence number and time and delivers it.
func (b *eventBus) publish(ev api.Event) api.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	ev.Seq = b.seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	b.recent = append(b.recent, ev)
	if len(b.recent) > b.keep {
		b.recent = b.recent[len(b.recent)-b.keep:]
	}
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			b.dropped++
		}
	}
	return ev
}

// subscribe returns a channel that first replays the recent events, then
// carries live ones until ctx ends.
func (b *eventBus) subscribe(ctx context.Context) <-chan api.Event {
	b.mu.Lock()
	ch := make(chan api.Event, 256+len(b.recent))
	for _, ev := range b.recent {
		ch <- ev
	}
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		delete(b.subs, ch)
		close(ch)
		b.mu.Unlock()
	}()
	return ch
}

// subscribeLive is subscribe without the replay of recent events.
func (b *eventBus) subscribeLive(ctx context.Context) <-chan api.Event {
	b.mu.Lock()
	ch := make(chan api.Event, 256)
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		delete(b.subs, ch)
		close(ch)
		b.mu.Unlock()
	}()
	return ch
}

// history returns the recent events.
func (b *eventBus) history() []api.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]api.Event(nil), b.recent...)
}
