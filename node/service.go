package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"

	"doppel/failover/journal"
	"doppel/failover/proxy"
	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/state"
)

const (
	streamJournal = "journal"       // clone: the OP's message journal
	rpcJournal    = "journal.since" // clone: journal entries after a position
)

// appService is an app's ingress on its OP node: the proxy clients connect
// to, the journal of their messages, and one journal stream per clone.
type appService struct {
	n    *Node
	app  string
	spec state.ServiceSpec
	j    *journal.Journal
	p    *proxy.Proxy
	vip  *vip

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	streams map[string]context.CancelFunc
}

// serviceListen is where the service listens on this node: ":PORT" means
// the node's advertised address.
func (n *Node) serviceListen(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || host != "" {
		return listen
	}
	return net.JoinHostPort(n.cfg.advertise(), port)
}

// startService opens an app's service on this node over journal j (which
// already holds, and has replayed, everything the app must see).
func (n *Node) startService(app string, spec state.ServiceSpec, j *journal.Journal, clones []string, lease func() bool) (*appService, error) {
	cfg := proxy.DefaultConfig()
	cfg.Listen = n.serviceListen(spec.Listen)
	cfg.Target = spec.Target
	if spec.Framing != "" {
		cfg.Framing = spec.Framing
	}
	if spec.Journal != "" {
		cfg.Journal = spec.Journal
	}
	cfg.Logger = n.log.With("app", app)
	cfg.Lease = lease
	p, err := proxy.New(cfg, j)
	if err != nil {
		return nil, err
	}
	// The address may still be held for a moment by a copy being fenced.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err = p.Listen(); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(n.ctx)
	s := &appService{n: n, app: app, spec: spec, j: j, p: p, ctx: ctx, cancel: cancel, streams: map[string]context.CancelFunc{}}
	if spec.VIP != "" {
		v, err := addVIP(spec.VIP, spec.VIPDev)
		if err != nil && v == nil {
			cancel()
			_ = p.Close()
			return nil, err
		}
		if err != nil {
			n.log.Warn("service vip", "app", app, "err", err)
		}
		s.vip = v
	}
	s.setClones(clones)
	n.publish(api.Event{Kind: api.KindApp, App: app, Message: fmt.Sprintf("service of %s open on %s (journal %s from %d)", app, p.Addr(), cfg.Journal, j.Last())})
	return s, nil
}

// setClones keeps one journal stream per clone.
func (s *appService) setClones(clones []string) {
	if s.spec.Journal == proxy.JournalOff {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[string]bool{}
	for _, c := range clones {
		want[c] = true
		if _, ok := s.streams[c]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(s.ctx)
		s.streams[c] = cancel
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.feed(ctx, c)
		}()
	}
	for c, cancel := range s.streams {
		if !want[c] {
			cancel()
			delete(s.streams, c)
			s.j.Forget(c)
		}
	}
}

// feed streams the journal to one clone, reconnecting with backoff.
func (s *appService) feed(ctx context.Context, clone string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.feedOnce(ctx, clone)
		if ctx.Err() != nil {
			return
		}
		s.n.log.Warn("journal stream to clone ended", "app", s.app, "peer", clone, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (s *appService) feedOnce(ctx context.Context, clone string) error {
	addr, err := s.n.peerAddr(clone)
	if err != nil {
		return err
	}
	st, err := s.n.peers.OpenStream(ctx, addr, streamJournal, s.app)
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	return journal.Send(ctx, st, s.j, clone)
}

func (s *appService) pause(ctx context.Context) (uint64, error) { return s.p.Pause(ctx) }
func (s *appService) resume()                                   { s.p.Resume() }

// close shuts the service: no more clients, no more journal streams.
func (s *appService) close() {
	if err := s.vip.remove(); err != nil {
		s.n.log.Warn("service vip", "app", s.app, "err", err)
	}
	_ = s.p.Close()
	s.cancel()
	s.wg.Wait()
}

// cloneJournal is the journal this node holds as a clone of app.
func (n *Node) cloneJournal(app string) *journal.Journal {
	n.jmu.Lock()
	defer n.jmu.Unlock()
	if n.journals == nil {
		n.journals = map[string]*journal.Journal{}
	}
	j := n.journals[app]
	if j == nil {
		j = journal.New(0)
		n.journals[app] = j
	}
	return j
}

// dropJournal forgets a clone journal (the app moved here or left).
func (n *Node) dropJournal(app string) {
	n.jmu.Lock()
	defer n.jmu.Unlock()
	delete(n.journals, app)
}

// handleJournal stores the OP's journal stream for an app this node clones.
func (n *Node) handleJournal(ctx context.Context, s *peer.Stream) {
	app := s.Hello().App
	if err := n.fromOP(app, s.Peer()); err != nil {
		n.log.Warn("journal stream refused", "app", app, "peer", s.Peer(), "err", err)
		return
	}
	if err := journal.Receive(ctx, s, n.cloneJournal(app)); err != nil && ctx.Err() == nil {
		n.log.Info("journal stream from OP ended", "app", app, "peer", s.Peer(), "err", err)
	}
	_ = s.CloseWrite()
}

type journalRequest struct {
	App   string `json:"app"`
	After uint64 `json:"after"`
}

// handleJournalSince answers a newly promoted OP that gathers the longest
// journal among the clones.
func (n *Node) handleJournalSince(ctx context.Context, from string, raw json.RawMessage) (any, error) {
	var req journalRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, err
	}
	return n.cloneJournal(req.App).Since(req.After), nil
}

// gatherJournal completes this node's clone journal of app with the entries
// other clones hold beyond it: in sync mode a message may have been stored
// by one clone only before the OP forwarded it.
func (n *Node) gatherJournal(ctx context.Context, a *state.App) *journal.Journal {
	j := n.cloneJournal(a.Spec.Name)
	for _, c := range a.Clones {
		if c == n.cfg.Name {
			continue
		}
		addr, err := n.peerAddr(c)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var more []journal.Entry
		err = n.peers.Call(cctx, addr, rpcJournal, journalRequest{App: a.Spec.Name, After: j.Last()}, &more)
		cancel()
		if err != nil {
			n.log.Info("journal of another clone unavailable", "app", a.Spec.Name, "peer", c, "err", err)
			continue
		}
		for _, e := range more {
			if err := j.Put(e); err != nil {
				break
			}
		}
	}
	return j
}
