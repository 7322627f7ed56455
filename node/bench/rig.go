package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"syscall"
	"time"

	"doppel/replicate"
	rbench "doppel/replicate/bench"
	"doppel/replicate/criu"
	"doppel/replicate/freezer"
)

// rig is what a baseline measurement runs its app with: a checkpoint
// engine and a CRIU driver of its own, in temporary state and work
// directories, with an app name and freezer cgroup no node uses.
type rig struct {
	e        *replicate.Engine
	drv      *criu.Driver
	ecfg     replicate.Config
	name     string
	stateDir string // the app's directory and the engine's state
	workDir  string // images go under it (a tmpfs when there is one)
	// restored is a tree restored by the driver outside the engine (the
	// init of a new PID namespace: its tree dies with it).
	restored *os.Process
}

// newRig makes the directories (under stateRoot, and workRoot or else
// /dev/shm or else stateRoot), finds CRIU and opens the engine; kind
// names them.
func newRig(kind, stateRoot, workRoot string, c criu.Config, log *slog.Logger) (r *rig, err error) {
	if workRoot == "" {
		workRoot = stateRoot
		if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
			workRoot = "/dev/shm"
		}
	}
	if err := os.MkdirAll(stateRoot, 0o700); err != nil {
		return nil, err
	}
	r = &rig{}
	defer func() {
		if err != nil {
			r.removeDirs()
		}
	}()
	if r.stateDir, err = os.MkdirTemp(stateRoot, kind+"-"); err != nil {
		return nil, err
	}
	if r.workDir, err = os.MkdirTemp(workRoot, "doppel-"+kind+"-"); err != nil {
		return nil, err
	}
	if c.Path, err = criu.Locate(c.Path, c.Prefix); err != nil {
		return nil, err
	}
	if r.drv, err = criu.New(c); err != nil {
		return nil, err
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	r.name = kind + "-" + hex.EncodeToString(b[:])
	r.ecfg = replicate.DefaultConfig()
	r.ecfg.StateDir = r.stateDir
	r.ecfg.WorkDir = r.workDir
	r.ecfg.CRIU = c
	r.ecfg.Freezer.Parent = path.Join(freezer.DefaultConfig().Parent, r.name)
	if r.e, err = replicate.New(r.ecfg, log); err != nil {
		return nil, err
	}
	return r, nil
}

// close kills the restored tree, stops the app, closes the engine and
// removes the app's cgroup and the directories; what names the
// measurement in errors.
func (r *rig) close(what string) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r.restored != nil {
		_ = r.restored.Signal(syscall.SIGKILL)
		_, _ = r.restored.Wait()
	}
	if serr := r.e.Stop(ctx, r.name); serr != nil && !errors.Is(serr, replicate.ErrNoApp) {
		err = fmt.Errorf("%s: stop app: %w", what, serr)
	}
	_ = r.e.Close()
	if cerr := rbench.RemoveAppCgroup(r.ecfg.Freezer, r.name, 10*time.Second); cerr != nil && err == nil {
		err = fmt.Errorf("%s: %w", what, cerr)
	}
	r.removeDirs()
	return err
}

func (r *rig) removeDirs() {
	for _, d := range []string{r.workDir, r.stateDir} {
		if d != "" {
			_ = os.RemoveAll(d)
		}
	}
}
