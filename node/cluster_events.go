package node

import (
	"bufio"
	"context"
	"encoding/json"
	"time"

	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/peer/membership"
)

// streamEvents carries a node's live events to another node, so that a
// client of any node's API sees the whole cluster (phases happen on OPs).
const streamEvents = "events"

// handleEvents streams this node's live events as JSON lines until the
// peer goes away.
func (n *Node) handleEvents(ctx context.Context, s *peer.Stream) {
	ch := n.events.subscribeLive(ctx)
	enc := json.NewEncoder(s)
	for ev := range ch {
		if err := enc.Encode(ev); err != nil {
			return
		}
	}
}

// Subscribe implements api.Backend: this node's events (the recent ones
// first), merged with the live events of every other member, renumbered
// in the order they arrive here.
func (n *Node) Subscribe(ctx context.Context) (<-chan api.Event, error) {
	out := make(chan api.Event, 512)
	in := make(chan api.Event, 512)
	local := n.events.subscribe(ctx)
	go func() {
		for ev := range local {
			select {
			case in <- ev:
			case <-ctx.Done():
			}
		}
	}()
	go n.followMembers(ctx, in)
	go func() {
		defer close(out)
		var seq uint64
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-in:
				seq++
				ev.Seq = seq
				select {
				case out <- ev:
				default: // a client that does not keep up loses events
				}
			}
		}
	}()
	return out, nil
}

// followMembers keeps one event stream from each other alive member,
// reconnecting a stream that ends.
func (n *Node) followMembers(ctx context.Context, in chan<- api.Event) {
	type follow struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	following := map[string]follow{}
	defer func() {
		for _, f := range following {
			f.cancel()
		}
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		alive := map[string]bool{}
		for _, m := range n.members.Members() {
			if m.Name == n.cfg.Name || m.Meta.Peer == "" || m.State != membership.StateAlive {
				continue
			}
			alive[m.Name] = true
			if _, ok := following[m.Name]; ok {
				continue
			}
			mctx, cancel := context.WithCancel(ctx)
			f := follow{cancel: cancel, done: make(chan struct{})}
			following[m.Name] = f
			go func(addr string) {
				defer close(f.done)
				n.followOne(mctx, addr, in)
			}(m.Meta.Peer)
		}
		for name, f := range following {
			select {
			case <-f.done:
				delete(following, name)
				continue
			default:
			}
			if !alive[name] {
				f.cancel()
				delete(following, name)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Node) followOne(ctx context.Context, addr string, in chan<- api.Event) {
	s, err := n.peers.OpenStream(ctx, addr, streamEvents, "")
	if err != nil {
		return
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	sc := bufio.NewScanner(s)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev api.Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			return
		}
		if ev.Kind == api.KindMember {
			continue // every node reports membership; this node's own view is enough
		}
		select {
		case in <- ev:
		case <-ctx.Done():
			return
		}
	}
}
