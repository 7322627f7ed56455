package tui

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"doppel/node/api"
)

// t0 is the fixed "now" of the tests.
var t0 = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

func TestMain(m *testing.M) {
	// Times print in UTC, whatever the machine's zone.
	time.Local = time.UTC
	os.Exit(m.Run())
}

// fakeSource is an in-memory Source with fixed data and a controllable
// event stream. Safe for concurrent use.
type fakeSource struct {
	mu      sync.Mutex
	status  api.Status
	nodes   []api.NodeInfo
	apps    []api.AppInfo
	details map[string]api.AppDetail
	epochs  map[string][]api.EpochInfo
	history []api.Event // delivered first on every new stream
	streams []*fakeStream
	calls   []string
	fail    map[string]error
	down    bool // every call fails with ErrNoDaemon
}

type fakeStream struct {
	ch   chan api.Event
	done chan struct{}
	once sync.Once
}

func (s *fakeStream) Next() (api.Event, error) {
	select {
	case ev := <-s.ch:
		return ev, nil
	case <-s.done:
		return api.Event{}, api.ErrClosed
	}
}

func (s *fakeStream) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

var _ Source = (*fakeSource)(nil)

func (f *fakeSource) call(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	if f.down {
		return &api.NoDaemonError{Socket: "/fake.sock"}
	}
	return f.fail[name]
}

// Calls lists the requests made so far.
func (f *fakeSource) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeSource) Status(ctx context.Context) (api.Status, error) {
	if err := f.call("Status"); err != nil {
		return api.Status{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, nil
}

func (f *fakeSource) Nodes(ctx context.Context) ([]api.NodeInfo, error) {
	if err := f.call("Nodes"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.NodeInfo(nil), f.nodes...), nil
}

func (f *fakeSource) Apps(ctx context.Context) ([]api.AppInfo, error) {
	if err := f.call("Apps"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.AppInfo(nil), f.apps...), nil
}

func (f *fakeSource) App(ctx context.Context, name string) (api.AppDetail, error) {
	if err := f.call("App " + name); err != nil {
		return api.AppDetail{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.details[name]
	if !ok {
		return api.AppDetail{}, fmt.Errorf("app %q: %w", name, api.ErrNotFound)
	}
	d.Epochs = append([]api.EpochInfo(nil), f.epochs[name]...)
	return d, nil
}

func (f *fakeSource) Epochs(ctx context.Context, name string) ([]api.EpochInfo, error) {
	if err := f.call("Epochs " + name); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.EpochInfo(nil), f.epochs[name]...), nil
}

func (f *fakeSource) Checkpoint(ctx context.Context, name string) (api.EpochInfo, error) {
	if err := f.call("Checkpoint " + name); err != nil {
		return api.EpochInfo{}, err
	}
	return api.EpochInfo{App: name, Epoch: 43, Phases: api.PhaseTimes{PSB: 1, RM: 8, SRM: 3, PRM: 90, Frozen: 60}, PagesChanged: 31, BytesStored: 120 << 10}, nil
}

func (f *fakeSource) Restore(ctx context.Context, name string, epoch uint64, force bool) (api.AppInfo, error) {
	if err := f.call(fmt.Sprintf("Restore %s %d force=%v", name, epoch, force)); err != nil {
		return api.AppInfo{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.apps {
		if f.apps[i].Name == name {
			f.apps[i].Term++
			f.apps[i].OP = f.status.Node
			f.apps[i].State = api.AppRestoring
			return f.apps[i], nil
		}
	}
	return api.AppInfo{}, api.ErrNotFound
}

func (f *fakeSource) Stop(ctx context.Context, name string) error {
	return f.call("Stop " + name)
}

func (f *fakeSource) Relocate(ctx context.Context, name, to string) (api.RelocateResult, error) {
	if err := f.call("Relocate " + name + " " + to); err != nil {
		return api.RelocateResult{}, err
	}
	return api.RelocateResult{App: name, To: to, PauseMs: 12}, nil
}

func (f *fakeSource) Failover(ctx context.Context, name, to string, force bool) (api.AppInfo, error) {
	if err := f.call("Failover " + name + " " + to); err != nil {
		return api.AppInfo{}, err
	}
	return api.AppInfo{Name: name, OP: to, Term: 2, State: api.AppRestoring}, nil
}

func (f *fakeSource) Drain(ctx context.Context, node string) (api.DrainResult, error) {
	return api.DrainResult{Node: node}, f.call("Drain " + node)
}

func (f *fakeSource) Undrain(ctx context.Context, node string) error {
	return f.call("Undrain " + node)
}

func (f *fakeSource) Events(ctx context.Context) (EventStream, error) {
	if err := f.call("Events"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &fakeStream{ch: make(chan api.Event, 256), done: make(chan struct{})}
	for _, ev := range f.history {
		s.ch <- ev
	}
	f.streams = append(f.streams, s)
	return s, nil
}

// push delivers an event to every open stream.
func (f *fakeSource) push(ev api.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history = append(f.history, ev)
	for _, s := range f.streams {
		select {
		case <-s.done:
		case s.ch <- ev:
		}
	}
}

// setApp changes one app.
func (f *fakeSource) setApp(name string, change func(a *api.AppInfo)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.apps {
		if f.apps[i].Name == name {
			change(&f.apps[i])
		}
	}
}

// fixture is a three-node cluster seen from n1: kv runs on n1 with two
// clones (n2 in sync, n3 lagging), web is stopped; kv has a resource
// graph (tree of 5 processes with warnings and a blocker) and three
// epochs, the last two with their phases, transfers and acks in the
// event history.
func fixture(t testing.TB) *fakeSource {
	t.Helper()
	graph, err := os.ReadFile("testdata/graph.json")
	if err != nil {
		t.Fatal(err)
	}
	var check map[string]any
	if err := json.Unmarshal(graph, &check); err != nil {
		t.Fatal(err)
	}
	at := func(sec float64) time.Time { return t0.Add(time.Duration(sec * float64(time.Second))) }
	f := &fakeSource{
		status: api.Status{Node: "n1", Leader: "n1", Quorum: true, Members: 3, Apps: 2, Version: "test"},
		nodes: []api.NodeInfo{
			{Name: "n1", Role: "worker", State: api.NodeAlive, Leader: true, Voter: true, Self: true, Load: 0.42,
				MemFree: 12 << 30, MemTotal: 24 << 30, Apps: []string{"kv"}, Clones: []string{}, Addr: "127.0.0.11:7948"},
			{Name: "n2", Role: "worker", State: api.NodeAlive, Voter: true, Load: 0.17,
				MemFree: 20 << 30, MemTotal: 24 << 30, Apps: []string{}, Clones: []string{"kv", "web"}, Addr: "127.0.0.12:7948"},
			{Name: "n3", Role: "worker", State: api.NodeSuspect, Drained: true, Voter: true, Load: 1.5,
				MemFree: 3 << 30, MemTotal: 8 << 30, Apps: []string{}, Clones: []string{"kv"}, Addr: "127.0.0.13:7948"},
		},
		apps: []api.AppInfo{
			{Name: "kv", OP: "n1", Term: 3, State: api.AppRunning, Args: []string{"kv-server"}, Replicas: 2,
				Interval: api.Duration(2 * time.Second), NewestEpoch: 42, NewestEpochAge: 1.2,
				Clones: []api.CloneInfo{
					{Node: "n2", State: api.CloneInSync, AckedEpoch: 42, BytesSent: 3 << 20, LastAck: at(-1)},
					{Node: "n3", State: api.CloneLagging, AckedEpoch: 39, LagEpochs: 3, LagSeconds: 6.1, BytesSent: 2 << 20, LastAck: at(-7)},
				},
				Service: "127.0.0.1:7070", JournalBacklog: 12, Pid: 4242},
			{Name: "web", OP: "", Term: 5, State: api.AppStopped, Args: []string{"web"}, Replicas: 1,
				Interval: api.Duration(5 * time.Second), NewestEpoch: 7, NewestEpochAge: 3600,
				Clones: []api.CloneInfo{{Node: "n2", State: api.CloneInSync, AckedEpoch: 7}}},
		},
		details: map[string]api.AppDetail{},
		epochs: map[string][]api.EpochInfo{
			"kv": {
				{App: "kv", Epoch: 40, Parent: 39, Term: 3, Created: at(-5.2), Barrier: 1200,
					Phases:       api.PhaseTimes{PSB: 0.4, RM: 7.9, SRM: 2.1, PRM: 96.3, Ingest: 4, Frozen: 61.2},
					PagesScanned: 1420, PagesChanged: 36, PagesNew: 2, BytesRaw: 5 << 20, BytesStored: 140 << 10},
				{App: "kv", Epoch: 41, Parent: 40, Term: 3, Created: at(-3.2), Barrier: 1260,
					Phases:       api.PhaseTimes{PSB: 1.3, RM: 8.2, SRM: 4.8, PRM: 122.7, Ingest: 5, Frozen: 88.4},
					PagesScanned: 1420, PagesChanged: 52, PagesNew: 0, BytesRaw: 5 << 20, BytesStored: 194 << 10},
				{App: "kv", Epoch: 42, Parent: 41, Term: 3, Created: at(-1.2), Barrier: 1311,
					Phases:       api.PhaseTimes{PSB: 0.3, RM: 6.5, SRM: 1.7, PRM: 88.1, Ingest: 3, Frozen: 50.2},
					PagesScanned: 1422, PagesChanged: 31, PagesNew: 1, BytesRaw: 5 << 20, BytesStored: 113 << 10, DataBlocksChanged: 2},
			},
			"web": {{App: "web", Epoch: 7, Parent: 6, Term: 5, Created: at(-3600), Phases: api.PhaseTimes{PSB: 1, RM: 3, SRM: 1, PRM: 40}}},
		},
		fail: map[string]error{},
	}
	kv := api.AppDetail{AppInfo: f.apps[0], Graph: json.RawMessage(graph)}
	f.details["kv"] = kv
	f.details["web"] = api.AppDetail{AppInfo: f.apps[1]}
	seq := uint64(0)
	ev := func(sec float64, e api.Event) {
		seq++
		e.Seq, e.Time = seq, at(sec)
		f.history = append(f.history, e)
	}
	ev(-60, api.Event{Kind: api.KindMember, Node: "n1", Message: "n1 is join"})
	ev(-58, api.Event{Kind: api.KindMember, Node: "n2", Message: "n2 is join"})
	ev(-57, api.Event{Kind: api.KindMember, Node: "n3", Message: "n3 is join"})
	ev(-40, api.Event{Kind: api.KindApp, Node: "n1", App: "kv", Message: "kv restored on n1 from epoch 12 (pid 4242, term 3)"})
	ev(-30, api.Event{Kind: api.KindPromotion, Node: "n1", App: "kv", Message: "n1 promoted to OP of kv at term 3: OP n2 is dead"})
	ev(-20, api.Event{Kind: api.KindMember, Node: "n3", Message: "n3 is suspect"})
	ev(-12, api.Event{Kind: api.KindError, Node: "n1", App: "kv", Epoch: 38, Message: "epoch 38 to n3: stream cut"})
	for _, e := range []struct {
		epoch uint64
		start float64
		pt    api.PhaseTimes
		xfer  [2]float64 // n2, n3
		ack   [2]float64
	}{
		{41, -3.35, api.PhaseTimes{PSB: 1.3, RM: 8.2, SRM: 4.8, PRM: 122.7}, [2]float64{11.2, 30.5}, [2]float64{6.3, 21.0}},
		{42, -1.31, api.PhaseTimes{PSB: 0.3, RM: 6.5, SRM: 1.7, PRM: 88.1}, [2]float64{9.8, 0}, [2]float64{4.4, 0}},
	} {
		s := e.start
		for _, p := range []struct {
			name string
			ms   float64
		}{{"PSB", e.pt.PSB}, {"RM", e.pt.RM}, {"SRM", e.pt.SRM}, {"PRM", e.pt.PRM}} {
			ev(s, api.Event{Kind: api.KindPhase, Node: "n1", App: "kv", Epoch: e.epoch, Phase: p.name})
			s += p.ms / 1000
			ev(s, api.Event{Kind: api.KindPhase, Node: "n1", App: "kv", Epoch: e.epoch, Phase: p.name, End: true, DurationMs: p.ms})
		}
		ev(s+0.004, api.Event{Kind: api.KindEpoch, Node: "n1", App: "kv", Epoch: e.epoch,
			Message: fmt.Sprintf("epoch %d: 31 of 1422 pages changed, 115712 bytes stored", e.epoch),
			Fields:  map[string]any{"pages_changed": 31.0, "pages_scanned": 1422.0, "bytes_stored": 115712.0}})
		for i, clone := range []string{"n2", "n3"} {
			if e.xfer[i] == 0 {
				continue
			}
			ev(s+0.05, api.Event{Kind: api.KindPhase, Node: "n1", App: "kv", Epoch: e.epoch, Phase: "XFER", End: true, DurationMs: e.xfer[i], Fields: map[string]any{"clone": clone}})
			ev(s+0.05, api.Event{Kind: api.KindPhase, Node: "n1", App: "kv", Epoch: e.epoch, Phase: "ACK", End: true, DurationMs: e.ack[i], Fields: map[string]any{"clone": clone}})
			ev(s+0.05, api.Event{Kind: api.KindAck, Node: clone, App: "kv", Epoch: e.epoch,
				Message: fmt.Sprintf("%s acknowledged epoch %d (24576 bytes in 40ms)", clone, e.epoch),
				Fields:  map[string]any{"bytes": 24576.0, "clone": clone}})
		}
	}
	ev(-1.1, api.Event{Kind: api.KindError, Node: "n1", App: "kv", Epoch: 42, Message: "epoch 42 to n3: connection refused"})
	return f
}

// testConfig is a configuration for the fake: fixed clock, no colour.
func testConfig(src Source) Config {
	cfg := DefaultConfig("/fake.sock")
	cfg.Endpoints = []Endpoint{{Node: "n1", Socket: "/fake.sock"}}
	cfg.Dial = func(string) Source { return src }
	cfg.NoColor = true
	cfg.Now = func() time.Time { return t0 }
	return cfg
}
