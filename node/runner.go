package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"doppel/node/api"
	"doppel/node/state"
	"doppel/replicate"
	"doppel/replicate/store"
	"doppel/replicate/wire"
)

// runner runs one app on its OP node: starts or restores it, checkpoints it
// every interval (or on demand), and streams each epoch to the clones.
type runner struct {
	n    *Node
	name string

	mu       sync.Mutex
	app      *state.App // newest placement seen
	status   string     // api.App* state
	lastErr  string
	newest   uint64
	newestAt time.Time

	kick   chan chan checkpointResult
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

type checkpointResult struct {
	ep  *store.Epoch
	err error
}

func (n *Node) newRunner(app *state.App) *runner {
	ctx, cancel := context.WithCancel(n.ctx)
	return &runner{
		n: n, name: app.Spec.Name, app: app.Clone(), status: api.AppStarting,
		kick: make(chan chan checkpointResult), ctx: ctx, cancel: cancel, done: make(chan struct{}),
	}
}

func (r *runner) start() { go r.loop() }

// update records a new placement of the app (clones or spec changed).
func (r *runner) update(app *state.App) {
	r.mu.Lock()
	r.app = app.Clone()
	r.mu.Unlock()
	r.n.health.forget(r.name, app.Clones)
}

// stop ends the runner; kill also kills the app's local copy.
func (r *runner) stop(kill bool) {
	r.cancel()
	<-r.done
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
	for {
		var reply chan checkpointResult
		select {
		case <-r.ctx.Done():
			return
		case reply = <-r.kick:
		case <-time.After(r.interval()):
		}
		ep, err := r.checkpoint()
		if reply != nil {
			reply <- checkpointResult{ep, err}
		}
	}
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
// epoch when it has one (a restart, a restore, or a promotion), unless it
// already runs here.
func (r *runner) ensureRunning() error {
	app, _, _, _, _ := r.snapshot()
	e := r.n.engine
	if st, err := e.App(r.name); err == nil && st.Running() {
		r.setStatus(api.AppRunning, nil)
		return nil
	}
	if latest, err := e.Store().Latest(r.name); err == nil && latest > 0 {
		if _, err := e.App(r.name); err != nil {
			return fmt.Errorf("restore %s: epochs but no registration here: %w", r.name, err)
		}
		r.setStatus(api.AppRestoring, nil)
		st, ep, err := e.Restore(r.ctx, r.name, replicate.RestoreOptions{Force: true})
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.newest, r.newestAt = ep.Manifest.Epoch, ep.Manifest.Created
		r.mu.Unlock()
		r.setStatus(api.AppRunning, nil)
		r.n.publish(api.Event{Kind: api.KindApp, App: r.name, Epoch: ep.Manifest.Epoch,
			Message: fmt.Sprintf("%s restored on %s from epoch %d (pid %d, term %d)", r.name, r.n.cfg.Name, ep.Manifest.Epoch, st.Pid, app.Term)})
		return nil
	}
	st, err := e.Run(r.ctx, toEngineSpec(app.Spec))
	if err != nil {
		return err
	}
	r.setStatus(api.AppRunning, nil)
	r.n.publish(api.Event{Kind: api.KindApp, App: r.name, Message: fmt.Sprintf("%s started on %s (pid %d)", r.name, r.n.cfg.Name, st.Pid)})
	return nil
}

// checkpoint takes an epoch and replicates it to every clone in parallel.
func (r *runner) checkpoint() (*store.Epoch, error) {
	app, _, _, _, _ := r.snapshot()
	n := r.n
	st, err := n.engine.App(r.name)
	if err == nil && !st.Running() {
		err = fmt.Errorf("%s exited (its newest epoch is kept; doppel restore %s)", r.name, r.name)
	}
	if err != nil {
		r.setStatus(api.AppFailed, err)
		return nil, err
	}
	ep, err := n.engine.Checkpoint(r.ctx, r.name, replicate.CheckpointOptions{
		Observer: func(ev replicate.Event) {
			n.publish(api.Event{Kind: api.KindPhase, App: ev.App, Epoch: ev.Epoch, Phase: string(ev.Phase),
				End: ev.End, DurationMs: float64(ev.Duration.Microseconds()) / 1000, Message: ev.Err, Time: ev.Time})
			if ev.End {
				n.metrics.phase(string(ev.Phase), ev.Duration)
			}
		},
	})
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
	r.mu.Unlock()
	n.metrics.epoch(r.name, m)
	n.publish(api.Event{Kind: api.KindEpoch, App: r.name, Epoch: m.Epoch,
		Message: fmt.Sprintf("epoch %d: %d of %d pages changed, %d bytes stored", m.Epoch, m.Pages.Changed, m.Pages.Scanned, m.Bytes.Stored),
		Fields: map[string]any{"pages_changed": m.Pages.Changed, "pages_scanned": m.Pages.Scanned, "bytes_stored": m.Bytes.Stored,
			"frozen_ms": float64(m.CRIUStats["frozen_time"]) / 1000}})

	var wg sync.WaitGroup
	for _, clone := range app.Clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.send(app, clone, m.Epoch)
		}()
	}
	wg.Wait()
	return ep, nil
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
}

type prepareReply struct {
	HasInit bool `json:"has_init"`
}

func (r *runner) sendEpoch(app *state.App, clone string, epoch uint64) (wire.Stats, error) {
	n := r.n
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Minute)
	defer cancel()
	addr, err := n.peerAddr(clone)
	if err != nil {
		return wire.Stats{}, err
	}
	st, err := n.engine.App(r.name)
	if err != nil {
		return wire.Stats{}, err
	}
	var rep prepareReply
	if err := n.peers.Call(ctx, addr, rpcPrepare, prepareRequest{App: r.name, InitExe: st.InitExe, InitSum: st.InitSum}, &rep); err != nil {
		return wire.Stats{}, fmt.Errorf("prepare: %w", err)
	}
	if !rep.HasInit && st.InitExe != "" {
		if err := r.sendInit(ctx, addr, st.InitExe); err != nil {
			return wire.Stats{}, fmt.Errorf("send init binary: %w", err)
		}
	}
	s, err := n.peers.OpenStream(ctx, addr, streamEpoch, r.name)
	if err != nil {
		return wire.Stats{}, err
	}
	defer s.Close()
	return wire.Send(ctx, s, n.engine.Store(), r.name, epoch, wire.DefaultConfig())
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
