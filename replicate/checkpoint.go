package replicate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"doppel/introspect"
	"doppel/replicate/criu"
	"doppel/replicate/datafile"
	"doppel/replicate/freezer"
	"doppel/replicate/store"
)

// ErrNotRunning means the app has no live process tree on this node.
var ErrNotRunning = errors.New("app is not running")

// CheckpointOptions are the caller's inputs to one checkpoint.
type CheckpointOptions struct {
	// Observer receives phase events; nil for none.
	Observer Observer
	// Barrier is called inside the PSB phase once the tree is frozen; it
	// pauses the ingress proxy at a message boundary and returns the
	// journal position to record. Nil: position 0.
	Barrier func(ctx context.Context) (uint64, error)
	// Resume is called as soon as the app runs again (success or not),
	// or, for an app that was frozen before the checkpoint (fenced) and
	// stays so, when the checkpoint lets go of it.
	Resume func()
	// Final ends the app with the checkpoint: CRIU kills the tree once it
	// is dumped (a relocation's last epoch), so nothing runs after the
	// barrier. If the dump fails the app is resumed as usual. The store's
	// GC does not start after a final epoch: the caller runs it once the
	// app serves again.
	Final bool
	// ClusterTerm is recorded in the manifest (store.Manifest.ClusterTerm).
	ClusterTerm uint64
}

// Checkpoint captures a running app as a new epoch: PSB (freeze the app's
// cgroup), RM (resource graph and preflight of the frozen tree), SRM (data
// files), PRM (CRIU dump, resume, page delta into the store). A blocker at
// RM or any failure resumes the app and discards the partial epoch; the
// previous epochs stay as they were. Errors: ErrNoApp, ErrNotRunning,
// ErrBusy, a *introspect.BlockedError (matching introspect.ErrBlocked)
// naming each blocking resource, a CRIU or store failure.
//
// Checkpoint returns once the epoch is committed (durable); the store's GC
// of epochs beyond retention then runs in the background (Close waits for
// it), except after a final epoch.
//
// The epoch is numbered above every epoch the store holds and above the
// highest number the app was ever given here (AppState.LastEpoch); its
// parent is the newest stored epoch. If the process running Checkpoint dies
// while the app is frozen, the next operation on the app (or the next New)
// thaws it.
func (e *Engine) Checkpoint(ctx context.Context, name string, opts CheckpointOptions) (*store.Epoch, error) {
	unlock, err := e.apps.lock(name, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := e.apps.load(name)
	if err != nil {
		return nil, err
	}
	e.thawIfAbandoned(st)
	if !st.Running() {
		return nil, fmt.Errorf("%w: %s (doppel restore %s brings it back from its newest epoch)", ErrNotRunning, name, name)
	}
	drv, criuVersion, err := e.criu(ctx)
	if err != nil {
		return nil, err
	}
	parent, err := e.store.Latest(name)
	if err != nil && !errors.Is(err, store.ErrNoEpoch) {
		return nil, err
	}
	number := max(parent, st.LastEpoch) + 1
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		return nil, err
	}
	if err := e.ensureInCgroup(cg, st); err != nil {
		return nil, err
	}

	// The transaction opens before the barrier: Begin waits for a running
	// store GC, which must not lengthen the freeze.
	tx, err := e.store.Begin(name, number, parent)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	committed := false
	defer func() {
		if !committed {
			tx.Abort()
		}
	}()

	clock := &phaseClock{app: name, epoch: number, obs: opts.Observer}
	var m store.Manifest
	m.Term = st.Term
	m.ClusterTerm = opts.ClusterTerm
	m.CRIUVersion = criuVersion
	m.Kernel = e.kernel

	// Everything below runs with the app frozen until thaw() is called;
	// every return path thaws it.
	// An app frozen before the checkpoint (fenced: Engine.Freeze) is
	// already at a barrier and stays frozen after it. Otherwise a marker
	// file says, while the app is frozen, that a checkpoint froze it: if
	// this process dies, the next one to take the app's lock thaws it (see
	// thawIfAbandoned), and only then.
	wasFrozen, err := cg.Frozen()
	if err != nil {
		return nil, err
	}
	marker := e.frozenMarker(name)
	frozen := false
	thaw := func() {
		if !frozen {
			return
		}
		frozen = false
		if !wasFrozen {
			if err := cg.Thaw(); err != nil {
				e.log.Error("thaw failed", "app", name, "err", err)
			} else {
				_ = os.Remove(marker)
			}
		}
		if opts.Resume != nil {
			opts.Resume()
		}
	}
	defer thaw()

	// PSB: every process stopped at once, the proxy paused.
	clock.begin(PSB)
	if !wasFrozen {
		err = os.WriteFile(marker, nil, 0o600)
	}
	if err == nil {
		fctx, cancel := context.WithTimeout(ctx, e.cfg.FreezeTimeout)
		err = cg.Freeze(fctx)
		cancel()
		if err != nil && !wasFrozen {
			_ = os.Remove(marker) // Freeze thawed it again
		}
	}
	if err == nil {
		frozen = true
		if opts.Barrier != nil {
			m.Barrier, err = opts.Barrier(ctx)
		}
	}
	m.Phases.PSB = clock.end(err)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: barrier: %w", name, err)
	}

	// RM: the resource graph of the frozen tree decides; blockers abort
	// before anything is written.
	clock.begin(RM)
	err = e.resources(ctx, st, number)
	m.Phases.RM = clock.end(err)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", name, err)
	}

	// SRM: data files, while memory and disk agree.
	clock.begin(SRM)
	err = e.snapshotData(ctx, tx, st, parent, &m)
	m.Phases.SRM = clock.end(err)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: data files: %w", name, err)
	}

	// PRM: CRIU captures memory, registers and the remaining kernel
	// objects of the frozen tree (it finds the cgroup frozen and leaves it
	// so); the app resumes; then the page delta goes into the store.
	clock.begin(PRM)
	if pid := killedPid(treePids(st.Pid, cg)); pid != 0 {
		// CRIU would wait for the dying tree until its timeout.
		err := fmt.Errorf("%w: %s: pid %d was killed during the checkpoint", ErrNotRunning, name, pid)
		clock.end(err)
		return nil, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	imgDir, cleanup, err := e.dumpDir(name)
	if err != nil {
		clock.end(err)
		return nil, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	defer cleanup()
	res, err := drv.Dump(ctx, criu.DumpOptions{
		Pid:          st.Pid,
		ImagesDir:    imgDir,
		WorkDir:      filepath.Dir(imgDir),
		LeaveRunning: !opts.Final,
		FreezeCgroup: cg.Path,
	})
	thaw()
	if err != nil {
		clock.end(err)
		if res != nil && res.Log != "" {
			if kept := e.keepLog(name, res.Log, "dump-failed.log"); kept != "" {
				return nil, fmt.Errorf("checkpoint %s: %w (CRIU's log kept as %s)", name, err, kept)
			}
		}
		return nil, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	m.CRIUStats = statsMap(res.Stats)
	err = tx.AddImageDir(ctx, imgDir)
	cleanup() // the images are in the store now: give the tmpfs back
	m.Phases.PRM = clock.end(err)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: store images: %w", name, err)
	}
	commitStart := time.Now()
	ep, err := tx.Commit(m)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: commit epoch %d: %w", name, number, err)
	}
	committed = true
	commitTook := time.Since(commitStart)
	st.LastEpoch = number
	if err := e.apps.save(st); err != nil {
		e.log.Warn("epoch stored, app state not updated", "app", name, "epoch", number, "err", err)
	}
	e.log.Info("epoch stored", "app", name, "epoch", number,
		"psb", m.Phases.PSB, "rm", m.Phases.RM, "srm", m.Phases.SRM, "prm", m.Phases.PRM,
		"dump", res.Wall, "commit", commitTook,
		"pages_changed", ep.Manifest.Pages.Changed, "bytes", ep.Manifest.Bytes.Stored)
	// Older epochs go in the background: the new one is durable already.
	// Not after a final epoch: what follows it (the transfer, the restore
	// on the target) is the app's pause, and the caller collects later.
	if !opts.Final {
		e.startGC()
	}
	return ep, nil
}

// resources is the RM phase: scan the frozen tree and refuse it if it holds
// a blocker. Warnings are logged, except those about the app's own log
// files, which doppel opened for it and hands over at restore.
func (e *Engine) resources(ctx context.Context, st *AppState, epoch uint64) error {
	icfg := e.cfg.Introspect
	icfg.DataPaths = st.Spec.DataPaths
	g, err := e.scanners.scan(ctx, st.Spec.Name, st.Pid, icfg)
	if err != nil {
		return err
	}
	if err := g.Check(); err != nil {
		return err
	}
	known := map[string]bool{st.Stdout: true, st.Stderr: true}
	for _, f := range g.Preflight() {
		if f.Level != introspect.LevelWarn {
			continue
		}
		if n := g.Node(f.Node); n != nil && n.File != nil && known[n.File.Path] {
			continue
		}
		e.log.Warn("checkpoint: "+f.Reason, "app", st.Spec.Name, "epoch", epoch, "resource", f.Node, "label", f.Label)
	}
	return nil
}

// keepLog copies a CRIU log that is about to be deleted with its work
// directory into the app's directory and returns the copy's path, "" when
// it could not.
func (e *Engine) keepLog(name, log, as string) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return ""
	}
	dst := filepath.Join(e.apps.path(name), as)
	if err := writeFileAtomic(dst, b, 0o600); err != nil {
		return ""
	}
	return dst
}

// dumpDir makes a fresh directory for CRIU's images under the work
// directory (a tmpfs by default, which keeps the freeze short); CRIU's log
// goes next to it. cleanup removes both.
func (e *Engine) dumpDir(name string) (imgDir string, cleanup func(), err error) {
	work, err := os.MkdirTemp(e.cfg.WorkDir, "doppel-dump-"+name+"-")
	if err != nil {
		return "", nil, err
	}
	imgDir = filepath.Join(work, "images")
	if err := os.Mkdir(imgDir, 0o700); err != nil {
		os.RemoveAll(work)
		return "", nil, err
	}
	return imgDir, func() { os.RemoveAll(work) }, nil
}

// ensureInCgroup puts every process of the app that is not yet in its
// freezer cgroup (a tree restored or adopted by an older doppel) there, so
// that the barrier stops all of them.
func (e *Engine) ensureInCgroup(cg *freezer.Cgroup, st *AppState) error {
	pids, err := cg.Pids()
	if err != nil {
		return err
	}
	in := make(map[int]bool, len(pids))
	for _, p := range pids {
		in[p] = true
	}
	for _, p := range treePids(st.Pid, nil) {
		if in[p] {
			continue
		}
		if err := cg.Add(p); err != nil && alive(p) {
			return err
		}
	}
	return nil
}

// statsMap records CRIU's dump stats in the manifest under CRIU's names,
// times in microseconds.
func statsMap(s criu.DumpStats) map[string]uint64 {
	us := func(d time.Duration) uint64 { return uint64(d.Microseconds()) }
	return map[string]uint64{
		"freezing_time":        us(s.FreezingTime),
		"frozen_time":          us(s.FrozenTime),
		"memdump_time":         us(s.MemdumpTime),
		"memwrite_time":        us(s.MemwriteTime),
		"irmap_resolve":        us(s.IrmapResolve),
		"pages_scanned":        s.PagesScanned,
		"pages_skipped_parent": s.PagesSkippedParent,
		"pages_written":        s.PagesWritten,
		"pages_lazy":           s.PagesLazy,
		"page_pipes":           s.PagePipes,
		"page_pipe_bufs":       s.PagePipeBufs,
		"shpages_scanned":      s.ShpagesScanned,
		"shpages_skipped":      s.ShpagesSkipped,
		"shpages_written":      s.ShpagesWritten,
	}
}

// snapshotData records the app's declared data paths into the epoch as a
// block delta against the parent epoch's snapshot.
func (e *Engine) snapshotData(ctx context.Context, tx *store.Txn, st *AppState, parent uint64, m *store.Manifest) error {
	if len(st.Spec.DataPaths) == 0 {
		return nil
	}
	var prev *store.DataSet
	if parent != 0 {
		pe, err := e.store.Load(st.Spec.Name, parent)
		if err != nil {
			return err
		}
		prev = pe.Data
	}
	set, counts, err := datafile.Snapshot(st.Spec.DataPaths, prev, tx, datafile.DefaultConfig())
	if err != nil {
		return err
	}
	tx.SetData(set)
	m.Data = counts
	return ctx.Err()
}
