package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"doppel/introspect"
	"doppel/node/api"
	"doppel/node/peer/membership"
	"doppel/node/state"
	"doppel/replicate"
	"doppel/replicate/store"
)

var _ api.Backend = (*Node)(nil)

// Status implements api.Backend.
func (n *Node) Status(ctx context.Context) (api.Status, error) {
	leader, _ := n.cluster.Leader()
	alive := 0
	for _, m := range n.members.Members() {
		if m.State == membership.StateAlive {
			alive++
		}
	}
	st := api.Status{
		Node:    n.cfg.Name,
		Leader:  leader,
		Quorum:  n.cluster.HasQuorum(),
		Members: alive,
		Apps:    len(n.cluster.State().Apps),
		Version: n.cfg.Version,
	}
	if !st.Quorum {
		st.QuorumReason = "no contact with a majority of the raft voters: no placement or promotion until it returns"
		if leader == "" {
			st.QuorumReason = "no raft leader: a majority of the voters is unreachable"
		}
	}
	return st, nil
}

// Nodes implements api.Backend.
func (n *Node) Nodes(ctx context.Context) ([]api.NodeInfo, error) {
	cs := n.cluster.State()
	leader, _ := n.cluster.Leader()
	voters := map[string]bool{}
	if servers, err := n.cluster.Servers(); err == nil {
		for _, s := range servers {
			voters[s.Name] = s.Voter
		}
	}
	var out []api.NodeInfo
	for _, m := range n.members.Members() {
		ni := api.NodeInfo{
			Name: m.Name, Role: m.Meta.Role, State: string(n.memberState(m)),
			Drained: cs.Drained[m.Name] || m.Meta.Drained, Leader: m.Name == leader, Voter: voters[m.Name], Self: m.Name == n.cfg.Name,
			Load: m.Meta.Load, MemFree: m.Meta.MemFree, MemTotal: m.Meta.MemTotal,
			Apps: []string{}, Clones: []string{},
			Version: m.Meta.Version, CRIU: m.Meta.CRIU, Addr: m.Meta.Peer, Since: m.Since,
		}
		for name, a := range cs.Apps {
			if a.OP == m.Name {
				ni.Apps = append(ni.Apps, name)
			}
			for _, c := range a.Clones {
				if c == m.Name {
					ni.Clones = append(ni.Clones, name)
				}
			}
		}
		sort.Strings(ni.Apps)
		sort.Strings(ni.Clones)
		out = append(out, ni)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Apps implements api.Backend.
func (n *Node) Apps(ctx context.Context) ([]api.AppInfo, error) {
	cs := n.cluster.State()
	names := make([]string, 0, len(cs.Apps))
	for name := range cs.Apps {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]api.AppInfo, 0, len(names))
	for _, name := range names {
		out = append(out, n.appInfo(ctx, cs.Apps[name]))
	}
	return out, nil
}

// appInfo describes an app: from the OP's runner when this node is the OP,
// else from the OP by RPC, else from the cluster state alone.
func (n *Node) appInfo(ctx context.Context, a *state.App) api.AppInfo {
	if r := n.runner(a.Spec.Name); r != nil {
		return n.localInfo(a, r)
	}
	if a.OP != "" {
		if addr, err := n.peerAddr(a.OP); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			var d api.AppDetail
			if err := n.peers.Call(cctx, addr, rpcDetail, a.Spec.Name, &d); err == nil {
				d.Graph = nil
				return d.AppInfo
			}
		}
	}
	return stateInfo(a)
}

// stateInfo describes an app from the cluster state alone: stopped when
// it has no OP, failed when its OP does not answer, and the clones with the
// epochs they acknowledged.
func stateInfo(a *state.App) api.AppInfo {
	info := baseInfo(a)
	info.State = api.AppStopped
	if a.OP != "" {
		info.State = api.AppFailed
	}
	for _, c := range a.Clones {
		ack := a.Acked[c]
		info.Clones = append(info.Clones, api.CloneInfo{Node: c, State: api.CloneSyncing, AckedEpoch: ack.Epoch, LastAck: ack.At})
		if ack.Epoch > info.NewestEpoch {
			info.NewestEpoch = ack.Epoch
		}
	}
	return info
}

func baseInfo(a *state.App) api.AppInfo {
	var service string
	if sv := a.Spec.Service; sv != nil {
		service = fmt.Sprintf("%s → %s (%s, journal %s)", sv.Listen, sv.Target, sv.Framing, sv.Journal)
	}
	info := api.AppInfo{
		Service: service,
		Name:    a.Spec.Name, OP: a.OP, Term: a.Term, Args: a.Spec.Args,
		Replicas: a.Spec.Replicas, Interval: api.Duration(a.Spec.Interval), DataPaths: a.Spec.DataPaths,
		Clones: []api.CloneInfo{},
	}
	if info.DataPaths == nil {
		info.DataPaths = []string{}
	}
	return info
}

func (n *Node) localInfo(a *state.App, r *runner) api.AppInfo {
	app, status, lastErr, newest, newestAt := r.snapshot()
	info := baseInfo(app)
	info.State = status
	info.NewestEpoch = newest
	if !newestAt.IsZero() {
		info.NewestEpochAge = time.Since(newestAt).Seconds()
	}
	if st, err := n.engine.App(a.Spec.Name); err == nil && st.Running() {
		info.Pid = st.Pid
	}
	interval := app.Spec.Interval
	if interval <= 0 {
		interval = n.cfg.Interval
		info.Interval = api.Duration(interval)
	}
	now := time.Now()
	for _, c := range app.Clones {
		info.Clones = append(info.Clones, n.health.view(a.Spec.Name, c, newest, newestAt, interval, now))
	}
	if svc := r.service(); svc != nil {
		info.Service = fmt.Sprintf("%s → %s (%s, journal %s)", svc.p.Addr(), svc.spec.Target, svc.spec.Framing, svc.spec.Journal)
		entries, _ := svc.j.Backlog()
		info.JournalBacklog = int64(entries)
	}
	_ = lastErr
	return info
}

func (n *Node) runner(name string) *runner {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.runners[name]
}

// lookupFresh is lookup after syncState: for decisions.
func (n *Node) lookupFresh(ctx context.Context, name string) (*state.App, error) {
	n.syncState(ctx)
	return n.lookup(name)
}

func (n *Node) lookup(name string) (*state.App, error) {
	a := n.cluster.State().Apps[name]
	if a == nil {
		return nil, fmt.Errorf("%w: no app %s in the cluster (doppel ls)", api.ErrNotFound, name)
	}
	return a, nil
}

// App implements api.Backend.
func (n *Node) App(ctx context.Context, name string) (api.AppDetail, error) {
	a, err := n.lookup(name)
	if err != nil {
		return api.AppDetail{}, err
	}
	if n.runner(name) == nil && a.OP != "" && a.OP != n.cfg.Name {
		if addr, err := n.peerAddr(a.OP); err == nil {
			var d api.AppDetail
			if err := n.peers.Call(ctx, addr, rpcDetail, name, &d); err == nil {
				return d, nil
			}
		}
	}
	return n.detailLocal(ctx, name)
}

// detailLocal describes an app from this node: its info, its resource
// graph when it runs here, and the epochs this node holds.
func (n *Node) detailLocal(ctx context.Context, name string) (api.AppDetail, error) {
	a, err := n.lookup(name)
	if err != nil {
		return api.AppDetail{}, err
	}
	d := api.AppDetail{AppInfo: n.appInfoLocal(a), Epochs: []api.EpochInfo{}}
	if st, err := n.engine.App(name); err == nil && st.Running() {
		cfg := introspect.DefaultConfig()
		cfg.DataPaths = st.Spec.DataPaths
		if g, err := introspect.Scan(ctx, st.Pid, cfg); err == nil {
			var buf bytes.Buffer
			if err := g.WriteJSON(&buf); err == nil {
				d.Graph = json.RawMessage(bytes.TrimSpace(buf.Bytes()))
			}
		}
	}
	if eps, err := n.localEpochs(name); err == nil {
		d.Epochs = eps
	}
	return d, nil
}

func (n *Node) appInfoLocal(a *state.App) api.AppInfo {
	if r := n.runner(a.Spec.Name); r != nil {
		return n.localInfo(a, r)
	}
	return stateInfo(a)
}

// Epochs implements api.Backend: the epochs this node holds, or the OP's.
func (n *Node) Epochs(ctx context.Context, name string) ([]api.EpochInfo, error) {
	a, err := n.lookup(name)
	if err != nil {
		return nil, err
	}
	eps, err := n.localEpochs(name)
	if err == nil && len(eps) > 0 {
		return eps, nil
	}
	if a.OP != "" && a.OP != n.cfg.Name {
		if addr, err := n.peerAddr(a.OP); err == nil {
			var d api.AppDetail
			if err := n.peers.Call(ctx, addr, rpcDetail, name, &d); err == nil {
				return d.Epochs, nil
			}
		}
	}
	return []api.EpochInfo{}, nil
}

func (n *Node) localEpochs(name string) ([]api.EpochInfo, error) {
	ms, err := n.engine.Epochs(name)
	if err != nil {
		return nil, err
	}
	out := make([]api.EpochInfo, 0, len(ms))
	for _, m := range ms {
		out = append(out, epochInfo(m))
	}
	return out, nil
}

func epochInfo(m store.Manifest) api.EpochInfo {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	raw, _ := json.Marshal(m)
	return api.EpochInfo{
		App: m.App, Epoch: m.Epoch, Parent: m.Parent, Term: m.Term, Created: m.Created, Barrier: m.Barrier,
		Phases: api.PhaseTimes{
			PSB: ms(m.Phases.PSB), RM: ms(m.Phases.RM), SRM: ms(m.Phases.SRM), PRM: ms(m.Phases.PRM),
			Ingest: ms(m.Phases.Ingest), Frozen: float64(m.CRIUStats["frozen_time"]) / 1000,
		},
		PagesScanned: m.Pages.Scanned, PagesChanged: m.Pages.Changed, PagesNew: m.Pages.New,
		DataBlocksChanged: m.Data.BlocksChanged, BytesRaw: m.Bytes.Raw, BytesStored: m.Bytes.Stored,
		Manifest: raw,
	}
}

// Run implements api.Backend: the app is placed by the leader (this node
// as OP when it can host apps) and started by its OP.
func (n *Node) Run(ctx context.Context, req api.RunRequest) (api.AppInfo, error) {
	interval := time.Duration(req.Interval)
	if interval == 0 {
		interval = n.cfg.Interval
	}
	spec := state.AppSpec{
		Name: req.Name, Args: req.Args, Dir: req.Dir, Env: req.Env, DataPaths: req.DataPaths,
		Replicas: req.Replicas, Interval: interval, Policy: req.Policy, Health: req.Health,
	}
	if sv := req.Service; sv != nil {
		spec.Service = &state.ServiceSpec{Listen: sv.Listen, Target: sv.Target, Framing: sv.Framing, Journal: sv.Journal,
			VIP: sv.VIP, VIPDev: sv.VIPDev}
		if spec.Service.Framing == "" {
			spec.Service.Framing = "line"
		}
		if spec.Service.Journal == "" {
			spec.Service.Journal = "sync"
		}
	}
	app, err := n.submit(ctx, submitRequest{Spec: spec, Preferred: n.cfg.Name})
	if err != nil {
		return api.AppInfo{}, err
	}
	info := stateInfo(app)
	info.State = api.AppStarting
	return info, nil
}

// Checkpoint implements api.Backend: on the OP, now.
func (n *Node) Checkpoint(ctx context.Context, name string) (api.EpochInfo, error) {
	a, err := n.lookupFresh(ctx, name)
	if err != nil {
		return api.EpochInfo{}, err
	}
	if a.OP == "" {
		return api.EpochInfo{}, fmt.Errorf("%w: %s is stopped (doppel restore %s)", api.ErrConflict, name, name)
	}
	if a.OP != n.cfg.Name {
		addr, err := n.peerAddr(a.OP)
		if err != nil {
			return api.EpochInfo{}, fmt.Errorf("%w: %v", api.ErrUnavailable, err)
		}
		var ei api.EpochInfo
		err = n.peers.Call(ctx, addr, rpcCheckpoint, name, &ei)
		return ei, fromPeer(err)
	}
	return n.checkpointLocal(ctx, name)
}

func (n *Node) checkpointLocal(ctx context.Context, name string) (api.EpochInfo, error) {
	r := n.runner(name)
	if r == nil {
		return api.EpochInfo{}, fmt.Errorf("%w: %s does not run on %s", api.ErrUnavailable, name, n.cfg.Name)
	}
	ep, err := r.trigger(ctx)
	if err != nil {
		if errors.Is(err, replicate.ErrBusy) {
			return api.EpochInfo{}, fmt.Errorf("%w: %v", api.ErrConflict, err)
		}
		return api.EpochInfo{}, err
	}
	return epochInfo(ep.Manifest), nil
}

// Restore implements api.Backend: the app is placed on this node with a
// new term, and this node restores it from its newest epoch (or epoch N).
func (n *Node) Restore(ctx context.Context, name string, epoch uint64, force bool) (api.AppInfo, error) {
	a, err := n.lookupFresh(ctx, name)
	if err != nil {
		return api.AppInfo{}, err
	}
	if a.OP != "" && !force {
		return api.AppInfo{}, fmt.Errorf("%w: %s runs on %s (doppel stop %s first, or --force)", api.ErrConflict, name, a.OP, name)
	}
	if epoch != 0 {
		return api.AppInfo{}, fmt.Errorf("%w: restoring an epoch other than the newest is not supported in a cluster", api.ErrBadRequest)
	}
	if latest, err := n.engine.Store().Latest(name); err != nil || latest == 0 {
		return api.AppInfo{}, fmt.Errorf("%w: %s holds no epoch of %s; run the restore on a node that does (doppel ls shows its clones)", api.ErrConflict, n.cfg.Name, name)
	}
	clones := PlaceClones(n.cfg.Name, a.Spec.Replicas, a.Clones, n.candidates())
	if err := n.apply(ctx, state.Command{Type: state.CmdPlace, Name: name, OP: n.cfg.Name, Term: a.Term + 1,
		Clones: clones, ExpectTerm: a.Term}); err != nil {
		return api.AppInfo{}, err
	}
	a, _ = n.lookup(name)
	info := baseInfo(a)
	info.State = api.AppRestoring
	return info, nil
}

// Stop implements api.Backend: the app is unplaced with a new term; its OP
// kills it. Epochs are kept on every node.
func (n *Node) Stop(ctx context.Context, name string) error {
	a, err := n.lookupFresh(ctx, name)
	if err != nil {
		return err
	}
	if a.OP == "" {
		return nil
	}
	return n.apply(ctx, state.Command{Type: state.CmdPlace, Name: name, OP: "", Term: a.Term + 1, Clones: a.Clones, ExpectTerm: a.Term})
}

// Remove implements api.Backend: the app leaves the cluster state; its OP
// kills it; then every alive node deletes its copy, epochs and
// registration.
func (n *Node) Remove(ctx context.Context, name string) error {
	if _, err := n.lookup(name); err != nil {
		return err
	}
	if err := n.apply(ctx, state.Command{Type: state.CmdRemoveApp, Name: name}); err != nil {
		return err
	}
	// The OP's runner stops on the new state; give it the moment it needs.
	deadline := time.Now().Add(10 * time.Second)
	for n.runner(name) != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var errs []string
	for _, m := range n.members.Members() {
		if m.State != membership.StateAlive {
			continue
		}
		var err error
		if m.Name == n.cfg.Name {
			err = n.forgetLocal(ctx, name)
		} else if addr := m.Meta.Peer; addr != "" {
			err = n.peers.Call(ctx, addr, rpcForget, name, nil)
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", m.Name, err))
		}
	}
	if len(errs) > 0 {
		n.log.Warn("app removed, but some nodes kept its data", "app", name, "errors", errs)
	}
	return nil
}

// progress publishes an export's or import's progress as app events, at
// most every 200 ms.
func (n *Node) progress(app, op string) replicate.Progress {
	var last time.Time
	return func(done, total int64) {
		if done < total && time.Since(last) < 200*time.Millisecond {
			return
		}
		last = time.Now()
		n.publish(api.Event{Kind: api.KindApp, App: app, Message: fmt.Sprintf("%s %d/%d bytes", op, done, total),
			Fields: map[string]any{"op": op, "done": done, "total": total}})
	}
}

// Export implements api.Backend: the archive is written by this node from
// the epochs it holds.
func (n *Node) Export(ctx context.Context, name string, req api.ExportRequest) (api.ExportResult, error) {
	if _, err := n.lookup(name); err != nil {
		return api.ExportResult{}, err
	}
	tmp := req.Path + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return api.ExportResult{}, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	defer os.Remove(tmp)
	h, err := n.engine.Export(ctx, name, req.Epoch, f, n.progress(name, "export"))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, req.Path)
	}
	if err != nil {
		if errors.Is(err, store.ErrNoEpoch) {
			return api.ExportResult{}, fmt.Errorf("%w: %s holds no epoch of %s: %v", api.ErrConflict, n.cfg.Name, name, err)
		}
		return api.ExportResult{}, err
	}
	fi, err := os.Stat(req.Path)
	if err != nil {
		return api.ExportResult{}, err
	}
	return api.ExportResult{App: name, Epoch: h.Epoch, Path: req.Path, Bytes: fi.Size(), RawBytes: h.Bytes}, nil
}

// Import implements api.Backend: the app is registered in the cluster,
// stopped, or placed on this node and restored when req.Start is set.
func (n *Node) Import(ctx context.Context, req api.ImportRequest) (api.ImportResult, error) {
	f, err := os.Open(req.Path)
	if err != nil {
		return api.ImportResult{}, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	defer f.Close()
	st, ep, err := n.engine.Import(ctx, f, replicate.ImportOptions{Progress: n.progress("", "import")})
	if err != nil {
		switch {
		case errors.Is(err, replicate.ErrAppExists):
			return api.ImportResult{}, fmt.Errorf("%w: %v", api.ErrConflict, err)
		case errors.Is(err, replicate.ErrBadArchive):
			return api.ImportResult{}, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
		}
		return api.ImportResult{}, err
	}
	name := st.Spec.Name
	spec := state.AppSpec{Name: name, Args: st.Spec.Args, Dir: st.Spec.Dir, Env: st.Spec.Env,
		DataPaths: st.Spec.DataPaths, Interval: n.cfg.Interval}
	if err := n.apply(ctx, state.Command{Type: state.CmdPutApp, App: &spec}); err != nil {
		if errors.Is(err, state.ErrExists) {
			return api.ImportResult{}, fmt.Errorf("%w: app %s already exists in the cluster", api.ErrConflict, name)
		}
		return api.ImportResult{}, err
	}
	res := api.ImportResult{App: name, Epoch: ep.Manifest.Epoch}
	if req.Start {
		a, err := n.lookupFresh(ctx, name)
		if err != nil {
			return res, err
		}
		if err := n.apply(ctx, state.Command{Type: state.CmdPlace, Name: name, OP: n.cfg.Name, Term: a.Term + 1, ExpectTerm: a.Term}); err != nil {
			return res, err
		}
		res.Started = true
	}
	n.publish(api.Event{Kind: api.KindApp, App: name, Epoch: res.Epoch, Message: fmt.Sprintf("%s imported from %s", name, req.Path)})
	return res, nil
}
