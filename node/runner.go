package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"doppel/failover/journal"
	"doppel/failover/proxy"
	"doppel/node/api"
	"doppel/node/peer"
	"doppel/node/state"
	"doppel/replicate"
	"doppel/replicate/store"
	"doppel/replicate/wire"
)

// runner runs one app on its OP node: starts or restores it (replaying the
// journal of its service), checkpoints it every interval (or on demand),
// streams each epoch to the clones, and fences it when this node loses the
// cluster's majority.
type runner struct {
	n    *Node
	name string

	mu       sync.Mutex
	app      *state.App // newest placement seen
	status   string     // api.App* state, or "fenced"
	lastErr  string
	newest   uint64
	newestAt time.Time
	svc      *appService      // the app's ingress, when it declares a service
	journal  *journal.Journal // the OP's journal; outlives svc across fencing and restarts
	barriers map[uint64]uint64

	fenced        bool
	noQuorumSince time.Time
	leaseUntil    time.Time // the service may forward until then
	moving        bool      // a relocation holds the app: no periodic epochs
	// forcedTerm is set when the operator promoted this node without a
	// majority (failover --force): the cluster state still names another
	// OP at this term; the runner records itself as OP once the majority is
	// back, or ends its copy if another node won meanwhile.
	forcedTerm  uint64
	healthFails int
	// born is when this node saw itself placed OP (the runner starts
	// then): an old OP's remaining lease (App.LeaseWait) counts from here.
	born time.Time

	kick   chan chan checkpointResult
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// statusFenced is an app frozen by its OP for lack of a majority.
const statusFenced = "fenced"

type checkpointResult struct {
	ep  *store.Epoch
	err error
}

func (n *Node) newRunner(app *state.App) *runner {
	ctx, cancel := context.WithCancel(n.ctx)
	return &runner{
		n: n, name: app.Spec.Name, app: app.Clone(), status: api.AppStarting, barriers: map[uint64]uint64{},
		kick: make(chan chan checkpointResult), ctx: ctx, cancel: cancel, done: make(chan struct{}),
		born: time.Now(),
	}
}

func (r *runner) start() { go r.loop() }

// update records a new placement of the app (clones or spec changed).
func (r *runner) update(app *state.App) {
	r.mu.Lock()
	r.app = app.Clone()
	svc := r.svc
	r.mu.Unlock()
	r.n.health.forget(r.name, app.Clones)
	if svc != nil {
		svc.setClones(app.Clones)
	}
}

// stop ends the runner and closes the service; kill also kills the app's
// local copy.
func (r *runner) stop(kill bool) {
	r.cancel()
	<-r.done
	r.closeService()
	if kill {
		if st, err := r.n.engine.App(r.name); err == nil && st.Running() {
			if err := r.n.engine.Stop(context.Background(), r.name); err != nil {
				r.n.log.Error("stop app", "app", r.name, "err", err)
			} else {
				r.n.publish(api.Event{Kind: api.KindApp, App: r.name, Message: r.name + " stopped on " + r.n.cfg.Name})
			}
		}
	}
}

func (r *runner) closeService() {
	r.mu.Lock()
	svc := r.svc
	r.svc = nil
	r.mu.Unlock()
	if svc != nil {
		svc.close()
	}
}

func (r *runner) service() *appService {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.svc
}

func (r *runner) snapshot() (app *state.App, status, lastErr string, newest uint64, newestAt time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.app.Clone(), r.status, r.lastErr, r.newest, r.newestAt
}

func (r *runner) setStatus(status string, err error) {
	r.mu.Lock()
	r.status = status
	if err != nil {
		r.lastErr = err.Error()
	} else if status == api.AppRunning {
		r.lastErr = ""
	}
	r.mu.Unlock()
	if err != nil {
		r.n.log.Error("app", "app", r.name, "status", status, "err", err)
		r.n.publish(api.Event{Kind: api.KindError, App: r.name, Message: err.Error()})
	}
}

func (r *runner) loop() {
	defer close(r.done)
	for r.ctx.Err() == nil {
		if err := r.ensureRunning(); err != nil {
			r.setStatus(api.AppFailed, err)
			if !r.wait(r.interval(), nil) {
				return
			}
			continue
		}
		break
	}
	// The majority is checked several times per lease, so that an OP cut
	// off from the cluster freezes its app within the lease.
	lease := r.n.cfg.FenceLease
	// Fencing runs on its own: a checkpoint blocked on an unreachable clone
	// must not delay it.
	go r.fenceLoop(lease)
	next := time.NewTimer(r.interval())
	defer next.Stop()
	for {
		var reply chan checkpointResult
		select {
		case <-r.ctx.Done():
			return
		case reply = <-r.kick:
		case <-next.C:
		}
		var ep *store.Epoch
		err := fmt.Errorf("%w: %s is fenced on %s: no contact with a majority of the cluster", api.ErrUnavailable, r.name, r.n.cfg.Name)
		switch {
		case r.isMoving():
			err = fmt.Errorf("%w: %s is being relocated", api.ErrConflict, r.name)
		case !r.isFenced():
			ep, err = r.checkpoint()
		}
		if reply != nil {
			reply <- checkpointResult{ep, err}
		}
		next.Reset(r.interval())
	}
}

func (r *runner) forcedAt() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.forcedTerm
}

// fence freezes the app and closes its service.
func (r *runner) fence(lease time.Duration, why string) {
	n := r.n
	r.mu.Lock()
	if r.fenced {
		r.mu.Unlock()
		return
	}
	r.fenced, r.status = true, statusFenced
	r.mu.Unlock()
	r.closeService()
	if err := n.engine.Freeze(r.ctx, r.name); err != nil {
		n.log.Error("fence: freeze", "app", r.name, "err", err)
	}
	n.log.Warn("fenced", "app", r.name, "why", why)
	n.publish(api.Event{Kind: api.KindError, App: r.name, Message: fmt.Sprintf("%s fenced on %s: %s (lease %s); frozen, service closed", r.name, n.cfg.Name, why, lease)})
}

// fenceLoop checks the majority several times per lease.
func (r *runner) fenceLoop(lease time.Duration) {
	t := time.NewTicker(max(lease/4, 50*time.Millisecond))
	defer t.Stop()
	// The lease's end is watched on its own, so that a slow majority check
	// (a leader that does not answer) never delays fencing.
	go func() {
		t := time.NewTicker(max(lease/10, 20*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-r.ctx.Done():
				return
			case <-t.C:
				r.mu.Lock()
				expired := !r.leaseUntil.IsZero() && time.Now().After(r.leaseUntil) && !r.fenced && r.forcedTerm == 0
				r.mu.Unlock()
				if expired {
					r.fence(lease, "its lease ran out")
				}
			}
		}
	}()
	r.checkQuorum(lease)
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			r.checkQuorum(lease)
		}
	}
}

// leaseValid says whether this OP may still forward client messages: it
// saw a majority that names it OP at its term within the lease. The proxy
// asks before each message, so an OP stopped or cut off stops serving at
// once when it runs again, before any check.
func (r *runner) leaseValid() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.forcedTerm > 0 || time.Now().Before(r.leaseUntil)
}

// renewLease extends the lease to one lease after start (taken before the
// question) when the leader still names this node OP; it never shortens
// it.
func (r *runner) renewLease(start time.Time) bool {
	if !r.stillOP() {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if until := start.Add(r.n.cfg.FenceLease); until.After(r.leaseUntil) {
		r.leaseUntil = until
	}
	return true
}

// stillOP reports whether the cluster, as the leader has it, still names
// this node OP of the app at the runner's term.
func (r *runner) stillOP() bool {
	n := r.n
	ctx, cancel := context.WithTimeout(r.ctx, max(n.cfg.FenceLease/2, 100*time.Millisecond))
	defer cancel()
	if n.cluster.IsLeader() {
		// The leader asks itself as it answers the others (rpcIndex).
		if n.cluster.VerifyLeader(ctx) != nil || !n.affirm.answer(n.cfg.Name, time.Now()) {
			return false
		}
	} else if !n.syncState(ctx) {
		return false
	}
	cur := n.cluster.State().Apps[r.name]
	r.mu.Lock()
	term := r.app.Term
	r.mu.Unlock()
	return cur != nil && cur.OP == n.cfg.Name && cur.Term == term
}

func (r *runner) isMoving() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.moving
}

// beginMove reserves the app for a relocation; false when one runs.
func (r *runner) beginMove() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.moving {
		return false
	}
	r.moving = true
	return true
}

func (r *runner) endMove() {
	r.mu.Lock()
	r.moving = false
	r.mu.Unlock()
}

func (r *runner) isFenced() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fenced
}

// checkQuorum fences the app (freezes it, closes its service) once this
// node has had no majority for the lease, and lifts the fence when the
// majority is back and this node is still the OP (if another node became
// OP meanwhile, the new term makes this node kill its copy).
func (r *runner) checkQuorum(lease time.Duration) {
	n := r.n
	start := time.Now()
	ok := n.cluster.HasQuorum()
	r.mu.Lock()
	forced := r.forcedTerm
	r.mu.Unlock()
	if forced > 0 {
		// Promoted by the operator without a majority: no fencing; once
		// the majority is back, make it the cluster's decision.
		if ok {
			r.claim(forced)
		}
		return
	}
	// A lease that ran out (this daemon was stopped or starved past it)
	// closes the service at once, before anything slower is asked.
	r.mu.Lock()
	expired := !r.leaseUntil.IsZero() && time.Now().After(r.leaseUntil)
	r.mu.Unlock()
	if expired {
		r.fence(lease, "its lease ran out")
	}
	// Serving needs a majority that still names this node OP at its term;
	// the lease runs from before the question.
	ok = ok && r.renewLease(start)
	r.mu.Lock()
	switch {
	case ok:
		r.noQuorumSince = time.Time{}
	case r.noQuorumSince.IsZero():
		r.noQuorumSince = time.Now()
	}
	since, fenced := r.noQuorumSince, r.fenced
	r.mu.Unlock()
	switch {
	case !ok && !fenced && time.Since(since) >= lease:
		r.fence(lease, fmt.Sprintf("no contact with a majority naming it OP for %s", time.Since(since).Round(time.Millisecond)))
	case ok && fenced:
		if err := n.engine.Thaw(r.name); err != nil {
			n.log.Error("unfence: thaw", "app", r.name, "err", err)
		}
		r.mu.Lock()
		r.fenced, r.status = false, api.AppRunning
		app := r.app.Clone()
		r.mu.Unlock()
		if err := r.openService(app, nil, 0); err != nil {
			r.setStatus(api.AppFailed, err)
		}
		n.publish(api.Event{Kind: api.KindApp, App: r.name, Message: fmt.Sprintf("%s unfenced on %s: majority back", r.name, n.cfg.Name)})
	}
}

// claim records a forced promotion in the cluster state at term+1, or, if
// another node became OP meanwhile, ends this copy.
func (r *runner) claim(term uint64) {
	n := r.n
	cur := n.cluster.State().Apps[r.name]
	if cur == nil {
		return
	}
	err := n.apply(r.ctx, state.Command{Type: state.CmdPlace, Name: r.name, OP: n.cfg.Name, Term: term + 1,
		Clones: PlaceClones(n.cfg.Name, cur.Spec.Replicas, cur.Clones, n.candidates()), ExpectTerm: term})
	r.mu.Lock()
	r.forcedTerm = 0
	r.mu.Unlock()
	if err != nil {
		n.log.Warn("forced promotion lost: another OP was chosen; ending this copy", "app", r.name, "err", err)
		n.publish(api.Event{Kind: api.KindError, App: r.name, Message: fmt.Sprintf("forced copy of %s on %s ended: %v", r.name, n.cfg.Name, err)})
		n.mu.Lock()
		if n.runners[r.name] == r {
			delete(n.runners, r.name)
			n.stopRunner(r)
		}
		n.mu.Unlock()
		return
	}
	n.publish(api.Event{Kind: api.KindPromotion, App: r.name, Node: n.cfg.Name,
		Message: fmt.Sprintf("forced promotion of %s to %s recorded at term %d: the majority is back", r.name, n.cfg.Name, term+1)})
}

// wait sleeps d unless the runner stops (false) or a checkpoint is asked
// for, which is answered with the error that keeps the app down.
func (r *runner) wait(d time.Duration, _ error) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return false
		case <-t.C:
			return true
		case reply := <-r.kick:
			r.mu.Lock()
			msg := r.lastErr
			r.mu.Unlock()
			reply <- checkpointResult{err: fmt.Errorf("%w: %s is not running here: %s", api.ErrUnavailable, r.name, msg)}
		}
	}
}

func (r *runner) interval() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.app.Spec.Interval > 0 {
		return r.app.Spec.Interval
	}
	return r.n.cfg.Interval
}

// ensureRunning starts the app, or restores it from this node's newest
// epoch when it has one (a restart, a restore, or a promotion) and replays
// the journal after that epoch's barrier, unless it already runs here; then
// it opens the app's service.
func (r *runner) ensureRunning() error {
	app, _, _, _, _ := r.snapshot()
	e := r.n.engine
	if st, err := e.App(r.name); err == nil && st.Running() {
		r.setStatus(api.AppRunning, nil)
		// A daemon restart lost the journal: a new one starts above every
		// sequence number used before.
		return r.openService(app, nil, 0)
	}
	if latest, err := e.Store().Latest(r.name); err == nil && latest > 0 {
		if _, err := e.App(r.name); err != nil {
			return fmt.Errorf("restore %s: epochs but no registration here: %w", r.name, err)
		}
		r.setStatus(api.AppRestoring, nil)
		start := time.Now()
		st, ep, err := e.Restore(r.ctx, r.name, replicate.RestoreOptions{Force: true})
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.newest, r.newestAt = ep.Manifest.Epoch, ep.Manifest.Created
		j := r.journal
		r.mu.Unlock()
		if j == nil && app.Spec.Service != nil {
			// Promoted: the journal this node kept as a clone, completed
			// with what the other clones hold.
			j = r.n.gatherJournal(r.ctx, app)
		}
		if err := r.openService(app, j, ep.Manifest.Barrier); err != nil {
			return err
		}
		r.setStatus(api.AppRunning, nil)
		r.n.publish(api.Event{Kind: api.KindApp, App: r.name, Epoch: ep.Manifest.Epoch,
			Message: fmt.Sprintf("%s restored on %s from epoch %d (pid %d, term %d) in %s", r.name, r.n.cfg.Name, ep.Manifest.Epoch, st.Pid, app.Term, time.Since(start).Round(time.Millisecond))})
		return nil
	}
	st, err := e.Run(r.ctx, toEngineSpec(app.Spec))
	if err != nil {
		return err
	}
	if err := r.openService(app, nil, 0); err != nil {
		return err
	}
	r.setStatus(api.AppRunning, nil)
	r.n.publish(api.Event{Kind: api.KindApp, App: r.name, Message: fmt.Sprintf("%s started on %s (pid %d)", r.name, r.n.cfg.Name, st.Pid)})
	return nil
}

// openService replays journal j after barrier into the app (j nil: a new
// journal), then opens the app's service, if it declares one.
func (r *runner) openService(app *state.App, j *journal.Journal, barrier uint64) error {
	sv := app.Spec.Service
	if sv == nil || r.service() != nil {
		return nil
	}
	r.mu.Lock()
	if j == nil {
		j = r.journal
	}
	r.mu.Unlock()
	if j == nil {
		j = journal.New(uint64(time.Now().UnixNano()))
	}
	if err := waitListening(r.ctx, sv.Target, 30*time.Second); err != nil {
		return fmt.Errorf("service of %s: the app does not listen on %s: %w", r.name, sv.Target, err)
	}
	if entries := j.Since(barrier); barrier > 0 && len(entries) > 0 {
		start := time.Now()
		n, err := proxy.Replay(r.ctx, sv.Target, entries, 5*time.Second)
		if err != nil {
			return fmt.Errorf("replay the journal of %s: %w", r.name, err)
		}
		r.n.publish(api.Event{Kind: api.KindApp, App: r.name,
			Message: fmt.Sprintf("replayed %d journaled message(s) into %s in %s", n, r.name, time.Since(start).Round(time.Millisecond))})
	}
	r.n.dropJournal(r.name)
	// Taken from an OP that did not hand it over (it failed, or was
	// moved without its consent): that OP may serve until its lease runs
	// out, so this one starts serving only after.
	if app.PrevOP != "" && app.PrevOP != r.n.cfg.Name && !app.Handover {
		wait := time.Until(app.Moved.Add(r.n.cfg.FenceLease))
		if app.LeaseWait != nil {
			wait = *app.LeaseWait - time.Since(r.born)
		}
		if wait > 0 {
			select {
			case <-r.ctx.Done():
				return r.ctx.Err()
			case <-time.After(wait):
			}
		}
	}
	// The first lease, like every renewal, runs from a question to the
	// leader that finds this node OP; the fence loop renews it.
	for start := time.Now(); r.forcedAt() == 0 && !r.renewLease(start); start = time.Now() {
		select {
		case <-r.ctx.Done():
			return r.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	svc, err := r.n.startService(r.name, *sv, j, app.Clones, r.leaseValid)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.svc, r.journal = svc, j
	r.mu.Unlock()
	return nil
}

// waitListening waits until addr accepts connections.
func waitListening(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// died handles an app that exited by itself on this healthy node, by its
// policy: restart (restore here from the newest epoch, replaying the
// journal), failover (promote a clone), or none.
func (r *runner) died(app *state.App) error {
	r.closeService()
	switch app.Spec.Policy {
	case state.PolicyNone:
		return fmt.Errorf("%s exited (policy none: its newest epoch is kept; doppel restore %s)", r.name, r.name)
	case state.PolicyFailover:
		r.n.publish(api.Event{Kind: api.KindApp, App: r.name, Message: fmt.Sprintf("%s exited on %s: failing over (policy failover)", r.name, r.n.cfg.Name)})
		if _, err := r.n.promote(r.ctx, app, "", "the app exited on "+r.n.cfg.Name); err != nil {
			return fmt.Errorf("%s exited and no clone could take over: %w", r.name, err)
		}
		return nil
	}
	r.n.publish(api.Event{Kind: api.KindApp, App: r.name, Message: fmt.Sprintf("%s exited on %s: restoring it from its newest epoch (policy restart)", r.name, r.n.cfg.Name)})
	return r.ensureRunning()
}

// checkpoint takes an epoch (pausing the service at a message boundary)
// and replicates it to every clone in parallel.
func (r *runner) checkpoint() (*store.Epoch, error) {
	app, _, _, _, _ := r.snapshot()
	n := r.n
	st, err := n.engine.App(r.name)
	if err == nil && st.Running() && app.Spec.Health != "" {
		if herr := checkHealth(r.ctx, app.Spec.Health, max(r.interval()/2, time.Second)); herr != nil {
			r.mu.Lock()
			r.healthFails++
			fails := r.healthFails
			r.mu.Unlock()
			n.publish(api.Event{Kind: api.KindError, App: r.name, Message: fmt.Sprintf("health check %s failed (%d/%d): %v", app.Spec.Health, fails, healthThreshold, herr)})
			if fails >= healthThreshold {
				r.mu.Lock()
				r.healthFails = 0
				r.mu.Unlock()
				// Unhealthy counts as dead: end this copy, then the policy.
				if kerr := n.engine.Stop(r.ctx, r.name); kerr != nil {
					n.log.Error("stop unhealthy app", "app", r.name, "err", kerr)
				}
				st.Pid = 0
			}
		} else {
			r.mu.Lock()
			r.healthFails = 0
			r.mu.Unlock()
		}
	}
	if err == nil && !st.Running() {
		if err = r.died(app); err == nil {
			err = fmt.Errorf("%w: %s was restarted; try again", api.ErrUnavailable, r.name)
		}
	}
	if err != nil {
		r.setStatus(api.AppFailed, err)
		return nil, err
	}
	opts := replicate.CheckpointOptions{}
	if svc := r.service(); svc != nil {
		opts.Barrier = svc.pause
		opts.Resume = svc.resume
	}
	ep, err := r.checkpointWith(r.ctx, opts)
	if err != nil {
		return nil, err
	}
	m := ep.Manifest
	var wg sync.WaitGroup
	for _, clone := range app.Clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.send(app, clone, m.Epoch)
		}()
	}
	wg.Wait()
	r.trimJournal(app.Clones)
	return ep, nil
}

// checkpointWith takes an epoch, publishing its phases, and records it;
// it does not replicate it.
func (r *runner) checkpointWith(ctx context.Context, opts replicate.CheckpointOptions) (*store.Epoch, error) {
	n := r.n
	also := opts.Observer
	opts.Observer = func(ev replicate.Event) {
		if also != nil {
			also(ev)
		}
		n.publish(api.Event{Kind: api.KindPhase, App: ev.App, Epoch: ev.Epoch, Phase: string(ev.Phase),
			End: ev.End, DurationMs: float64(ev.Duration.Microseconds()) / 1000, Message: ev.Err, Time: ev.Time})
		if ev.End {
			n.metrics.phase(string(ev.Phase), ev.Duration)
		}
	}
	app, _, _, _, _ := r.snapshot()
	opts.ClusterTerm = app.Term
	if f := r.forcedAt(); f > 0 {
		opts.ClusterTerm = f + 1 // the term it claims once the majority is back
	}
	ep, err := n.engine.Checkpoint(ctx, r.name, opts)
	if err != nil {
		if r.ctx.Err() == nil {
			n.publish(api.Event{Kind: api.KindError, App: r.name, Message: err.Error()})
		}
		return nil, err
	}
	m := ep.Manifest
	r.mu.Lock()
	r.newest, r.newestAt = m.Epoch, m.Created
	r.status = api.AppRunning
	r.barriers[m.Epoch] = m.Barrier
	r.mu.Unlock()
	n.metrics.epoch(r.name, m)
	n.publish(api.Event{Kind: api.KindEpoch, App: r.name, Epoch: m.Epoch,
		Message: fmt.Sprintf("epoch %d: %d of %d pages changed, %d bytes stored", m.Epoch, m.Pages.Changed, m.Pages.Scanned, m.Bytes.Stored),
		Fields: map[string]any{"pages_changed": m.Pages.Changed, "pages_scanned": m.Pages.Scanned, "bytes_stored": m.Bytes.Stored,
			"frozen_ms": float64(m.CRIUStats["frozen_time"]) / 1000, "barrier": m.Barrier}})
	return ep, nil
}

// trimJournal drops the journal entries every clone has in an epoch.
func (r *runner) trimJournal(clones []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.journal == nil || len(clones) == 0 {
		return
	}
	oldest := uint64(0)
	for i, c := range clones {
		acked := r.n.health.ackedEpoch(r.name, c)
		if i == 0 || acked < oldest {
			oldest = acked
		}
	}
	if b, ok := r.barriers[oldest]; ok && oldest > 0 {
		r.journal.Trim(b)
	}
	for e := range r.barriers {
		if e < oldest {
			delete(r.barriers, e)
		}
	}
}

// send streams one epoch to one clone and records its acknowledgement.
func (r *runner) send(app *state.App, clone string, epoch uint64) {
	n := r.n
	n.health.sending(r.name, clone, epoch)
	start := time.Now()
	stats, err := r.sendEpoch(app, clone, epoch)
	if err != nil {
		n.health.failed(r.name, clone, err, stats.WireSent, time.Now())
		n.publish(api.Event{Kind: api.KindError, App: r.name, Epoch: epoch,
			Message: fmt.Sprintf("epoch %d to %s: %v", epoch, clone, err)})
		return
	}
	now := time.Now()
	n.health.acked(r.name, clone, epoch, stats.WireSent, now)
	n.metrics.sent(r.name, clone, stats)
	for _, p := range []struct {
		phase string
		d     time.Duration
	}{{string(replicate.XFER), stats.Transfer}, {string(replicate.ACK), stats.Ack}} {
		n.publish(api.Event{Kind: api.KindPhase, App: r.name, Epoch: epoch, Phase: p.phase, End: true,
			DurationMs: float64(p.d.Microseconds()) / 1000, Fields: map[string]any{"clone": clone}})
		n.metrics.phase(p.phase, p.d)
	}
	n.publish(api.Event{Kind: api.KindAck, App: r.name, Epoch: epoch, Node: clone,
		Message: fmt.Sprintf("%s acknowledged epoch %d (%d bytes in %s)", clone, epoch, stats.WireSent, now.Sub(start).Round(time.Millisecond)),
		Fields:  map[string]any{"bytes": stats.WireSent, "clone": clone}})
	if err := n.apply(r.ctx, state.Command{Type: state.CmdAck, Name: r.name, Node: clone, Epoch: epoch, Term: app.Term}); err != nil && r.ctx.Err() == nil {
		n.log.Warn("record ack", "app", r.name, "peer", clone, "epoch", epoch, "err", err)
	}
}

// prepareRequest tells a clone about an app before its epochs arrive.
type prepareRequest struct {
	App     string `json:"app"`
	InitExe string `json:"init_exe"`
	InitSum string `json:"init_sum"`
	// Stdout and Stderr are the app's log files on the OP: a clone
	// restores it writing to the same paths.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
}

type prepareReply struct {
	HasInit bool `json:"has_init"`
}

func (r *runner) sendEpoch(app *state.App, clone string, epoch uint64) (wire.Stats, error) {
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Minute)
	defer cancel()
	s, err := r.openEpochStream(ctx, clone)
	if err != nil {
		return wire.Stats{}, err
	}
	defer s.Close()
	return wire.Send(ctx, s, r.n.engine.Store(), r.name, epoch, r.n.wireConfig())
}

// openEpochStream prepares clone for the app's epochs (and ships the init
// binary if it lacks it) and opens the stream an epoch is sent on. A
// relocation opens it before its last epoch, so that the pause does not
// include the round trips.
func (r *runner) openEpochStream(ctx context.Context, clone string) (*peer.Stream, error) {
	n := r.n
	addr, err := n.peerAddr(clone)
	if err != nil {
		return nil, err
	}
	st, err := n.engine.App(r.name)
	if err != nil {
		return nil, err
	}
	var rep prepareReply
	if err := n.peers.Call(ctx, addr, rpcPrepare, prepareRequest{App: r.name, InitExe: st.InitExe, InitSum: st.InitSum, Stdout: st.Stdout, Stderr: st.Stderr}, &rep); err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	if !rep.HasInit && st.InitExe != "" {
		if err := r.sendInit(ctx, addr, st.InitExe); err != nil {
			return nil, fmt.Errorf("send init binary: %w", err)
		}
	}
	return n.peers.OpenStream(ctx, addr, streamEpoch, r.name)
}

// sendInit ships the app's init binary: an 8-byte size, the bytes, then
// one byte back once the clone has stored and verified it.
func (r *runner) sendInit(ctx context.Context, addr, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	s, err := r.n.peers.OpenStream(ctx, addr, streamInit, r.name)
	if err != nil {
		return err
	}
	defer s.Close()
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(fi.Size()))
	if _, err := s.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := io.Copy(s, f); err != nil {
		return err
	}
	var ok [1]byte
	if _, err := io.ReadFull(s, ok[:]); err != nil {
		return fmt.Errorf("no confirmation from the clone: %w", err)
	}
	return nil
}

// trigger asks for an epoch now and waits for it.
func (r *runner) trigger(ctx context.Context) (*store.Epoch, error) {
	reply := make(chan checkpointResult, 1)
	select {
	case r.kick <- reply:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.done:
		return nil, fmt.Errorf("%w: %s is stopping here", api.ErrUnavailable, r.name)
	}
	select {
	case res := <-reply:
		return res.ep, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
