package replicate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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

// Restore brings an app that is not running back from an epoch: the
// epoch's images are materialised and checked against their hashes, the
// data files are rewritten in place, then CRIU restores the process tree
// into fresh PID and IPC namespaces, as a child of this process, and the
// app is registered as running again with its term incremented.
//
// Errors: ErrNoApp, ErrBusy, ErrRunning, store.ErrNoEpoch, ErrMismatch
// (unless Force), store.ErrCorrupt for damaged stored content (detected
// before the data files are touched), a CRIU failure. After an error
// nothing of the app runs; the data files may have been rewritten to the
// epoch's state (a later restore rewrites them again).
func (e *Engine) Restore(ctx context.Context, name string, opts RestoreOptions) (*AppState, *store.Epoch, error) {
	unlock, err := e.apps.lock(name, false)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	st, err := e.apps.load(name)
	if err != nil {
		return nil, nil, err
	}
	if st.Running() {
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
	drv, criuVersion, err := e.criu(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := e.compatible(&ep.Manifest, criuVersion, opts.Force); err != nil {
		return nil, nil, err
	}
	if err := checkInit(st); err != nil {
		return nil, nil, err
	}

	// Images first, checked: a damaged epoch must fail before the data
	// files are rewritten.
	work, err := os.MkdirTemp(e.cfg.WorkDir, "doppel-restore-"+name+"-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(work)
	imgDir := filepath.Join(work, "images")
	t0 := time.Now()
	standby := e.takeStandby(ctx, ep, imgDir)
	if !standby {
		if err := e.store.Materialise(ctx, name, n, imgDir); err != nil {
			return nil, nil, fmt.Errorf("restore %s epoch %d: %w", name, n, err)
		}
	}
	tMat := time.Since(t0)
	// A standby was checked as it was written.
	if !standby {
		if err := verifyImages(ctx, imgDir, ep.Images); err != nil {
			return nil, nil, fmt.Errorf("restore %s epoch %d: %w (restore an older epoch with --epoch)", name, n, err)
		}
	}
	tVerify := time.Since(t0) - tMat
	if ep.Data != nil {
		if _, err := datafile.Restore(ep.Data, "/", e.store); err != nil {
			return nil, nil, fmt.Errorf("restore %s epoch %d: data files: %w", name, n, err)
		}
	}
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		return nil, nil, err
	}
	res, err := drv.Restore(ctx, criu.RestoreOptions{
		ImagesDir:   imgDir,
		WorkDir:     work,
		AppendFiles: []string{st.Stdout, st.Stderr},
	})
	if err != nil {
		if res != nil && res.Log != "" {
			if kept := e.keepLog(name, res.Log, "restore-failed.log"); kept != "" {
				return nil, nil, fmt.Errorf("restore %s epoch %d: %w (CRIU's log kept as %s)", name, n, err, kept)
			}
		}
		return nil, nil, fmt.Errorf("restore %s epoch %d: %w", name, n, err)
	}
	p, aerr := shim.Attach(res.Pid)
	if aerr == nil {
		e.adopt(p)
	}
	fail := func(err error) (*AppState, *store.Epoch, error) {
		tmp := *st
		tmp.Pid, tmp.PidStart, tmp.Cgroup = res.Pid, procStart(res.Pid), cg.Path
		if kerr := e.kill(context.WithoutCancel(ctx), &tmp); kerr != nil {
			e.log.Error("cannot kill app after a failed restore", "app", name, "pid", res.Pid, "err", kerr)
		}
		return nil, nil, fmt.Errorf("restore %s epoch %d: %w", name, n, err)
	}
	// The epoch recorded the cgroup frozen (the barrier); CRIU puts that
	// state back, so resume the app explicitly.
	if err := e.ensureInCgroup(cg, &AppState{Pid: res.Pid}); err != nil {
		return fail(err)
	}
	if err := cg.Thaw(); err != nil {
		return fail(err)
	}
	st.Pid, st.PidStart = res.Pid, procStart(res.Pid)
	st.Cgroup = cg.Path
	st.Term++
	st.LastEpoch = max(st.LastEpoch, n)
	if err := e.apps.save(st); err != nil {
		return fail(err)
	}
	e.log.Info("app restored", "app", name, "epoch", n, "pid", res.Pid, "took", res.Wall,
		"materialise", tMat, "standby", standby, "verify", tVerify, "total", time.Since(t0))
	return st, ep, nil
}

// compatible refuses an epoch from another CRIU version or kernel unless
// forced, naming both.
func (e *Engine) compatible(m *store.Manifest, criuVersion string, force bool) error {
	var diff []string
	if m.CRIUVersion != "" && m.CRIUVersion != criuVersion {
		diff = append(diff, fmt.Sprintf("CRIU %s there, %s here", m.CRIUVersion, criuVersion))
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
	if st.InitSum == "" {
		return nil
	}
	got, err := initSum(st.InitExe)
	if err != nil {
		return fmt.Errorf("restore %s: init binary %s: %w", st.Spec.Name, st.InitExe, err)
	}
	if got != st.InitSum {
		return fmt.Errorf("restore %s: init binary %s has sha256 %s, the app was started with %s", st.Spec.Name, st.InitExe, got, st.InitSum)
	}
	return nil
}

// verifyImages checks a materialised image directory against the epoch's
// description: every file present with its size, and every page or chunk
// hashing to the recorded hash. Materialise copies stored records without
// reading them, so this is where damaged content is caught. Errors wrap
// store.ErrCorrupt.
func verifyImages(ctx context.Context, dir string, images []store.ImageFile) error {
	for i := range images {
		if err := ctx.Err(); err != nil {
			return err
		}
		if images[i].Kind == store.KindSymlink {
			continue
		}
		if err := store.VerifyImage(filepath.Join(dir, images[i].Name), &images[i]); err != nil {
			return fmt.Errorf("%w: image %s: %v", store.ErrCorrupt, images[i].Name, err)
		}
	}
	return nil
}
