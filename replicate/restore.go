package replicate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"doppel/replicate/criu"
	"doppel/replicate/datafile"
	"doppel/replicate/freezer"
	"doppel/replicate/shim"
	"doppel/replicate/store"
)

// ErrRunning means the app already runs on this node.
var ErrRunning = errors.New("app is running")

// ErrMismatch means the epoch was captured with another CRIU version or
// kernel than this node has.
var ErrMismatch = errors.New("epoch captured on a different CRIU or kernel")

// RestoreOptions are the caller's inputs to a restore.
type RestoreOptions struct {
	// Epoch to restore; 0 means the newest complete one.
	Epoch uint64
	// Force restores even when the epoch's CRIU version or kernel differ
	// from this node's.
	Force bool
}

// Restore brings an app that is not running back from an epoch: the data
// files are rewritten in place first, then CRIU restores the process tree
// into a fresh PID namespace, as a child of this process, and the app is
// registered as running again with its term incremented.
func (e *Engine) Restore(ctx context.Context, name string, opts RestoreOptions) (*AppState, *store.Epoch, error) {
	unlock, err := e.apps.lock(name)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	st, err := e.apps.load(name)
	if err != nil {
		return nil, nil, err
	}
	if alive(st.Pid) {
		return nil, nil, fmt.Errorf("%w: %s as pid %d (doppel stop %s first)", ErrRunning, name, st.Pid, name)
	}
	n := opts.Epoch
	if n == 0 {
		if n, err = e.store.Latest(name); err != nil {
			return nil, nil, fmt.Errorf("restore %s: %w (take one with doppel checkpoint %s)", name, err, name)
		}
	}
	ep, release, err := e.store.Pin(name, n)
	if err != nil {
		return nil, nil, fmt.Errorf("restore %s epoch %d: %w (doppel epochs %s lists them)", name, n, err, name)
	}
	defer release()
	criuPath, err := e.criuPath(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := e.compatible(&ep.Manifest, opts.Force); err != nil {
		return nil, nil, err
	}
	if err := checkInit(st); err != nil {
		return nil, nil, err
	}
	drv, err := e.driver(criuPath)
	if err != nil {
		return nil, nil, err
	}

	if ep.Data != nil {
		if _, err := datafile.Restore(ep.Data, "/", e.store); err != nil {
			return nil, nil, fmt.Errorf("restore %s epoch %d: data files: %w", name, n, err)
		}
	}
	imgDir, err := os.MkdirTemp(e.cfg.WorkDir, "doppel-restore-"+name+"-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(imgDir)
	if err := e.store.Materialise(ctx, name, n, imgDir); err != nil {
		return nil, nil, err
	}
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		return nil, nil, err
	}
	res, err := drv.Restore(ctx, criu.RestoreOptions{
		ImagesDir:   imgDir,
		AppendFiles: []string{st.Stdout, st.Stderr},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("restore %s epoch %d: %w", name, n, err)
	}
	// The epoch recorded the cgroup frozen (the barrier); CRIU puts that
	// state back, so resume the app explicitly.
	if err := cg.Thaw(); err != nil {
		e.log.Warn("thaw after restore", "app", name, "err", err)
	}
	if p, err := shim.Attach(res.Pid); err == nil {
		e.adopt(p)
	}
	st.Pid = res.Pid
	st.Cgroup = cg.Path
	st.Term++
	if err := e.apps.save(st); err != nil {
		return nil, nil, err
	}
	e.log.Info("app restored", "app", name, "epoch", n, "pid", res.Pid, "took", res.Wall)
	return st, ep, nil
}

// compatible refuses an epoch from another CRIU version or kernel unless
// forced, naming both.
func (e *Engine) compatible(m *store.Manifest, force bool) error {
	var diff []string
	if m.CRIUVersion != "" && m.CRIUVersion != e.criuVersion {
		diff = append(diff, fmt.Sprintf("CRIU %s there, %s here", m.CRIUVersion, e.criuVersion))
	}
	if m.Kernel != "" && e.kernel != "" && m.Kernel != e.kernel {
		diff = append(diff, fmt.Sprintf("kernel %s there, %s here", m.Kernel, e.kernel))
	}
	if len(diff) == 0 {
		return nil
	}
	if force {
		e.log.Warn("restoring an epoch from a different host", "app", m.App, "epoch", m.Epoch, "diff", diff)
		return nil
	}
	return fmt.Errorf("%w: epoch %d of %s: %s (restore with --force to try anyway)", ErrMismatch, m.Epoch, m.App, strings.Join(diff, "; "))
}

// checkInit makes sure the app's init binary is where the epoch expects it,
// with the same content: CRIU maps it by path.
func checkInit(st *AppState) error {
	if st.InitExe == "" {
		return nil
	}
	if _, err := os.Stat(st.InitExe); err != nil {
		return fmt.Errorf("restore %s: init binary %s is missing (import the app's archive, which carries it): %w", st.Spec.Name, st.InitExe, err)
	}
	return nil
}
