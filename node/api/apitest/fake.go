// Package apitest provides Fake, an in-memory api.Backend for tests of the
// local API and of its clients (CLI, TUI). It keeps apps, epochs and
// events in memory and starts no process.
package apitest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"doppel/node/api"
)

// Fake is an in-memory api.Backend with simple, deterministic rules:
//
//   - Run: a new app is "running" on the fake's node at term 1; an existing
//     name is a conflict.
//   - Checkpoint: a running app gets epoch newest+1 (parent newest); a
//     stopped app is a conflict.
//   - Restore: epoch 0 is the newest; an unknown epoch is not found; a
//     running app is a conflict unless forced; the term grows by one.
//   - Stop: a stopped app is a conflict. Remove: a running app is a
//     conflict.
//
// Every change publishes an event (kind app or epoch). Failures can be
// injected per method with Fail. Safe for concurrent use.
type Fake struct {
	mu     sync.Mutex
	node   string
	status api.Status
	nodes  []api.NodeInfo
	apps   map[string]*fakeApp
	// archives are exported apps by path, for Import.
	archives map[string]fakeApp
	fail     map[string]error
	subs     map[*subscriber]struct{}
	seq      uint64
	now      func() time.Time
}

type fakeApp struct {
	info   api.AppInfo
	epochs []api.EpochInfo
}

type subscriber struct {
	ctx context.Context
	ch  chan api.Event
}

var _ api.Backend = (*Fake)(nil)

// NewFake returns a fake of a one-node cluster whose node is named node.
func NewFake(node string) *Fake {
	return &Fake{
		node:   node,
		status: api.Status{Node: node, Leader: node, Quorum: true, Members: 1, Version: "test"},
		nodes: []api.NodeInfo{{
			Name: node, Role: "worker", State: api.NodeAlive, Leader: true, Voter: true, Self: true,
			Apps: []string{}, Clones: []string{}, Version: "test",
		}},
		apps: map[string]*fakeApp{},
		fail: map[string]error{},
		subs: map[*subscriber]struct{}{},
		now:  time.Now,
	}
}

// Fail makes the Backend method named method (e.g. "Status", "Run") return
// err until cleared with a nil err.
func (f *Fake) Fail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, method)
		return
	}
	f.fail[method] = err
}

// SetNodes replaces the member list.
func (f *Fake) SetNodes(nodes []api.NodeInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = append([]api.NodeInfo(nil), nodes...)
	f.status.Members = len(nodes)
}

// Subscribers is the number of live subscriptions.
func (f *Fake) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// Publish numbers ev (Seq), stamps it (Time, when zero) and delivers it to
// every subscriber, blocking while a subscriber's buffer is full and its
// context alive. It returns the event as delivered.
func (f *Fake) Publish(ev api.Event) api.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.publishLocked(ev)
}

func (f *Fake) publishLocked(ev api.Event) api.Event {
	f.seq++
	ev.Seq = f.seq
	if ev.Time.IsZero() {
		ev.Time = f.now()
	}
	for s := range f.subs {
		select {
		case s.ch <- ev:
		case <-s.ctx.Done():
		}
	}
	return ev
}

// EndSubscriptions closes every subscriber's channel, as a backend that
// stops does; the API server then ends its streams.
func (f *Fake) EndSubscriptions() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		delete(f.subs, s)
		close(s.ch)
	}
}

func (f *Fake) failure(method string) error {
	return f.fail[method]
}

func (f *Fake) app(name string) (*fakeApp, error) {
	a, ok := f.apps[name]
	if !ok {
		return nil, fmt.Errorf("app %q: %w", name, api.ErrNotFound)
	}
	return a, nil
}

// Status implements api.Backend.
func (f *Fake) Status(ctx context.Context) (api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Status"); err != nil {
		return api.Status{}, err
	}
	st := f.status
	st.Apps = len(f.apps)
	return st, nil
}

// Nodes implements api.Backend.
func (f *Fake) Nodes(ctx context.Context) ([]api.NodeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Nodes"); err != nil {
		return nil, err
	}
	return append([]api.NodeInfo(nil), f.nodes...), nil
}

// Apps implements api.Backend, sorted by name.
func (f *Fake) Apps(ctx context.Context) ([]api.AppInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Apps"); err != nil {
		return nil, err
	}
	out := make([]api.AppInfo, 0, len(f.apps))
	for _, a := range f.apps {
		out = append(out, a.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// App implements api.Backend.
func (f *Fake) App(ctx context.Context, name string) (api.AppDetail, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("App"); err != nil {
		return api.AppDetail{}, err
	}
	a, err := f.app(name)
	if err != nil {
		return api.AppDetail{}, err
	}
	return api.AppDetail{AppInfo: a.info, Epochs: append([]api.EpochInfo(nil), a.epochs...)}, nil
}

// Epochs implements api.Backend.
func (f *Fake) Epochs(ctx context.Context, name string) ([]api.EpochInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Epochs"); err != nil {
		return nil, err
	}
	a, err := f.app(name)
	if err != nil {
		return nil, err
	}
	return append([]api.EpochInfo(nil), a.epochs...), nil
}

// Run implements api.Backend.
func (f *Fake) Run(ctx context.Context, req api.RunRequest) (api.AppInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Run"); err != nil {
		return api.AppInfo{}, err
	}
	if _, ok := f.apps[req.Name]; ok {
		return api.AppInfo{}, fmt.Errorf("app %q exists: %w", req.Name, api.ErrConflict)
	}
	info := api.AppInfo{
		Name: req.Name, OP: f.node, Term: 1, State: api.AppRunning,
		Args: req.Args, Replicas: req.Replicas, Interval: req.Interval, DataPaths: req.DataPaths,
		Clones: []api.CloneInfo{}, Pid: 1000 + len(f.apps),
	}
	f.apps[req.Name] = &fakeApp{info: info}
	f.publishLocked(api.Event{Kind: api.KindApp, Node: f.node, App: req.Name, Message: "started"})
	return info, nil
}

// Checkpoint implements api.Backend.
func (f *Fake) Checkpoint(ctx context.Context, name string) (api.EpochInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Checkpoint"); err != nil {
		return api.EpochInfo{}, err
	}
	a, err := f.app(name)
	if err != nil {
		return api.EpochInfo{}, err
	}
	if a.info.State != api.AppRunning {
		return api.EpochInfo{}, fmt.Errorf("app %q is %s: %w", name, a.info.State, api.ErrConflict)
	}
	e := api.EpochInfo{
		App: name, Epoch: a.info.NewestEpoch + 1, Parent: a.info.NewestEpoch, Term: a.info.Term,
		Created: f.now(), Phases: api.PhaseTimes{PSB: 1, RM: 2, SRM: 3, PRM: 4},
		Nodes: []string{f.node},
	}
	a.epochs = append(a.epochs, e)
	a.info.NewestEpoch = e.Epoch
	f.publishLocked(api.Event{Kind: api.KindEpoch, Node: f.node, App: name, Epoch: e.Epoch})
	return e, nil
}

// Restore implements api.Backend.
func (f *Fake) Restore(ctx context.Context, name string, epoch uint64, force bool) (api.AppInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Restore"); err != nil {
		return api.AppInfo{}, err
	}
	a, err := f.app(name)
	if err != nil {
		return api.AppInfo{}, err
	}
	if epoch == 0 {
		epoch = a.info.NewestEpoch
	}
	found := false
	for _, e := range a.epochs {
		found = found || e.Epoch == epoch
	}
	if !found {
		return api.AppInfo{}, fmt.Errorf("app %q has no epoch %d: %w", name, epoch, api.ErrNotFound)
	}
	if a.info.State == api.AppRunning && !force {
		return api.AppInfo{}, fmt.Errorf("app %q is running (stop it or force): %w", name, api.ErrConflict)
	}
	a.info.State = api.AppRunning
	a.info.Term++
	f.publishLocked(api.Event{Kind: api.KindApp, Node: f.node, App: name, Epoch: epoch, Message: "restored"})
	return a.info, nil
}

// Export implements api.Backend: the archive is kept in memory by path.
func (f *Fake) Export(ctx context.Context, name string, req api.ExportRequest) (api.ExportResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Export"); err != nil {
		return api.ExportResult{}, err
	}
	a, err := f.app(name)
	if err != nil {
		return api.ExportResult{}, err
	}
	if len(a.epochs) == 0 {
		return api.ExportResult{}, fmt.Errorf("app %q has no epoch: %w", name, api.ErrConflict)
	}
	if f.archives == nil {
		f.archives = map[string]fakeApp{}
	}
	cp := *a
	cp.epochs = append([]api.EpochInfo(nil), a.epochs...)
	f.archives[req.Path] = cp
	f.publishLocked(api.Event{Kind: api.KindApp, Node: f.node, App: name, Message: "exported",
		Fields: map[string]any{"op": "export", "done": 1, "total": 1}})
	return api.ExportResult{App: name, Epoch: a.info.NewestEpoch, Path: req.Path, Bytes: 1, RawBytes: 1}, nil
}

// Import implements api.Backend.
func (f *Fake) Import(ctx context.Context, req api.ImportRequest) (api.ImportResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Import"); err != nil {
		return api.ImportResult{}, err
	}
	a, ok := f.archives[req.Path]
	if !ok {
		return api.ImportResult{}, fmt.Errorf("no archive at %s: %w", req.Path, api.ErrNotFound)
	}
	if _, ok := f.apps[a.info.Name]; ok {
		return api.ImportResult{}, fmt.Errorf("app %q exists: %w", a.info.Name, api.ErrConflict)
	}
	a.info.State, a.info.OP, a.info.Pid = api.AppStopped, "", 0
	if req.Start {
		a.info.State, a.info.OP = api.AppRunning, f.node
	}
	f.apps[a.info.Name] = &a
	f.publishLocked(api.Event{Kind: api.KindApp, Node: f.node, App: a.info.Name, Message: "imported"})
	return api.ImportResult{App: a.info.Name, Epoch: a.info.NewestEpoch, Started: req.Start}, nil
}

// Failover implements api.Backend: the app moves to node to (or "n2").
func (f *Fake) Failover(ctx context.Context, name, to string, force bool) (api.AppInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Failover"); err != nil {
		return api.AppInfo{}, err
	}
	a, err := f.app(name)
	if err != nil {
		return api.AppInfo{}, err
	}
	if to == "" {
		to = "n2"
	}
	a.info.OP = to
	a.info.Term++
	a.info.State = api.AppRunning
	f.publishLocked(api.Event{Kind: api.KindPromotion, Node: to, App: name, Message: "promoted"})
	return a.info, nil
}

// Relocate implements api.Backend.
func (f *Fake) Relocate(ctx context.Context, name, to string) (api.RelocateResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Relocate"); err != nil {
		return api.RelocateResult{}, err
	}
	a, err := f.app(name)
	if err != nil {
		return api.RelocateResult{}, err
	}
	if a.info.OP == to {
		return api.RelocateResult{}, fmt.Errorf("app %q already runs on %s: %w", name, to, api.ErrConflict)
	}
	from := a.info.OP
	a.info.OP = to
	a.info.Term++
	f.publishLocked(api.Event{Kind: api.KindRelocation, Node: to, App: name, Message: "relocated"})
	return api.RelocateResult{App: name, From: from, To: to, Term: a.info.Term, Epoch: a.info.NewestEpoch, PauseMs: 1}, nil
}

// Drain implements api.Backend.
func (f *Fake) Drain(ctx context.Context, node string) (api.DrainResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Drain"); err != nil {
		return api.DrainResult{}, err
	}
	res := api.DrainResult{Node: node, Moves: []api.RelocateResult{}, Errors: []string{}}
	for i := range f.nodes {
		if f.nodes[i].Name == node {
			f.nodes[i].Drained = true
		}
	}
	return res, nil
}

// Undrain implements api.Backend.
func (f *Fake) Undrain(ctx context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.nodes {
		if f.nodes[i].Name == node {
			f.nodes[i].Drained = false
		}
	}
	return f.failure("Undrain")
}

// Balance implements api.Backend.
func (f *Fake) Balance(ctx context.Context) (api.BalancePlan, error) {
	return api.BalancePlan{Reason: "balancer disabled", Loads: map[string]float64{}}, f.failure("Balance")
}

// Stop implements api.Backend.
func (f *Fake) Stop(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Stop"); err != nil {
		return err
	}
	a, err := f.app(name)
	if err != nil {
		return err
	}
	if a.info.State == api.AppStopped {
		return fmt.Errorf("app %q is already stopped: %w", name, api.ErrConflict)
	}
	a.info.State = api.AppStopped
	a.info.Pid = 0
	f.publishLocked(api.Event{Kind: api.KindApp, Node: f.node, App: name, Message: "stopped"})
	return nil
}

// Remove implements api.Backend.
func (f *Fake) Remove(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Remove"); err != nil {
		return err
	}
	a, err := f.app(name)
	if err != nil {
		return err
	}
	if a.info.State == api.AppRunning {
		return fmt.Errorf("app %q is running (stop it first): %w", name, api.ErrConflict)
	}
	delete(f.apps, name)
	f.publishLocked(api.Event{Kind: api.KindApp, Node: f.node, App: name, Message: "removed"})
	return nil
}

// Subscribe implements api.Backend: each subscriber has a buffer of 64
// events; its channel closes after ctx ends.
func (f *Fake) Subscribe(ctx context.Context) (<-chan api.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failure("Subscribe"); err != nil {
		return nil, err
	}
	s := &subscriber{ctx: ctx, ch: make(chan api.Event, 64)}
	f.subs[s] = struct{}{}
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.subs[s]; ok {
			delete(f.subs, s)
			close(s.ch)
		}
	}()
	return s.ch, nil
}
