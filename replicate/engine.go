// Package replicate captures a whole application on one node as a chain of
// epochs and restores it anywhere: the checkpoint phases (PSB, RM, SRM, PRM),
// the epoch store, the data-file delta, the wire format, and restore.
//
// Sub-packages: criu (the CRIU driver), shim (apps in their own PID
// namespace), freezer (the cgroup that stops an app at once), store (the
// content-addressed epoch store), datafile (block delta of data paths) and
// wire (the stream between nodes).
package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"doppel/introspect"
	"doppel/replicate/criu"
	"doppel/replicate/freezer"
	"doppel/replicate/shim"
	"doppel/replicate/store"
)

// Config configures an Engine.
type Config struct {
	// StateDir holds apps/, store/ and bin/ (the init executables).
	StateDir string
	// CRIU drives the criu binary.
	CRIU criu.Config
	// Store tunes the epoch store (retention among others).
	Store store.Config
	// Freezer says where app cgroups live.
	Freezer freezer.Config
	// Introspect configures the resource scan of the RM phase.
	Introspect introspect.Config
	// FreezeTimeout bounds the PSB phase.
	FreezeTimeout time.Duration
	// WorkDir is where CRIU writes images before they are stored; a tmpfs
	// keeps the freeze short. Empty: /dev/shm when it exists, else
	// StateDir/tmp.
	WorkDir string
}

// DefaultConfig is the production configuration under /var/lib/doppel.
func DefaultConfig() Config {
	return Config{
		StateDir:      "/var/lib/doppel",
		CRIU:          criu.DefaultConfig(),
		Store:         store.DefaultConfig(),
		Freezer:       freezer.DefaultConfig(),
		Introspect:    introspect.DefaultConfig(),
		FreezeTimeout: 10 * time.Second,
	}
}

// Engine runs, checkpoints and restores the apps of one node. Its methods
// are safe for concurrent use; operations on one app are serialised by a
// lock file, so two processes (a daemon and a CLI) cannot interleave them.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	apps  apps
	store *store.Store

	criuVersion string
	kernel      string

	mu sync.Mutex // guards children
	// children are inits this process started and must reap.
	children map[int]*shim.Process
}

// New opens the engine's state directory.
func New(cfg Config, log *slog.Logger) (*Engine, error) {
	if log == nil {
		log = slog.Default()
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("state directory %q is not absolute", cfg.StateDir)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = filepath.Join(cfg.StateDir, "tmp")
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			cfg.WorkDir = "/dev/shm"
		}
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	cfg.Store.Logger = log
	st, err := store.Open(filepath.Join(cfg.StateDir, "store"), cfg.Store)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:      cfg,
		log:      log,
		apps:     apps{dir: filepath.Join(cfg.StateDir, "apps")},
		store:    st,
		children: map[int]*shim.Process{},
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.kernel = unix.ByteSliceToString(u.Release[:])
	}
	return e, nil
}

// Close releases the store. Apps keep running.
func (e *Engine) Close() error { return e.store.Close() }

// Store is the engine's epoch store (for the wire and export).
func (e *Engine) Store() *store.Store { return e.store }

// criuPath finds CRIU and its version once.
func (e *Engine) criuPath(ctx context.Context) (string, error) {
	p, err := criu.Locate(e.cfg.CRIU.Path, e.cfg.CRIU.Prefix)
	if err != nil {
		return "", err
	}
	if e.criuVersion == "" {
		v, err := criu.BinaryVersion(ctx, p)
		if err != nil {
			return "", err
		}
		if v.Less(criu.MinVersion) {
			return "", fmt.Errorf("%w: %s is %s (run: sudo scripts/get-criu.sh)", criu.ErrTooOld, p, v)
		}
		e.criuVersion = v.String()
	}
	return p, nil
}

// Run starts an app under a new init in a new PID namespace and registers
// it. Its stdout and stderr go to log files in the app's directory.
func (e *Engine) Run(ctx context.Context, spec Spec) (*AppState, error) {
	if err := ValidName(spec.Name); err != nil {
		return nil, err
	}
	if len(spec.Args) == 0 {
		return nil, errors.New("no command: give it after --, e.g. doppel run NAME -- CMD ARGS")
	}
	for i, p := range spec.DataPaths {
		if !filepath.IsAbs(p) {
			abs, err := filepath.Abs(p)
			if err != nil {
				return nil, err
			}
			spec.DataPaths[i] = abs
		}
		spec.DataPaths[i] = filepath.Clean(spec.DataPaths[i])
	}
	unlock, err := e.apps.lock(spec.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if old, err := e.apps.load(spec.Name); err == nil && alive(old.Pid) {
		return nil, fmt.Errorf("%w: %s runs as pid %d (doppel stop %s first)", ErrAppExists, spec.Name, old.Pid, spec.Name)
	}
	exe, sum, err := shim.InstallExe(e.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	dir := e.apps.path(spec.Name)
	st := &AppState{
		Spec:    spec,
		InitExe: exe,
		InitSum: sum,
		Stdout:  filepath.Join(dir, "stdout.log"),
		Stderr:  filepath.Join(dir, "stderr.log"),
		Started: time.Now(),
		Term:    1,
	}
	stdout, err := os.OpenFile(st.Stdout, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer stdout.Close()
	stderr, err := os.OpenFile(st.Stderr, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	cg, err := freezer.Open(e.cfg.Freezer, spec.Name)
	if err != nil {
		return nil, err
	}
	st.Cgroup = cg.Path
	p, err := shim.Start(ctx, shim.StartOptions{
		Exe: exe, Args: spec.Args, Dir: spec.Dir, Env: spec.Env,
		Stdout: stdout, Stderr: stderr,
		// The whole tree must be in the cgroup: the init joins it before
		// it starts the app.
		BeforeApp: cg.Add,
	})
	if err != nil {
		return nil, err
	}
	st.Pid = p.Pid
	if err := e.apps.save(st); err != nil {
		_ = p.Kill()
		_, _ = p.Wait()
		return nil, err
	}
	e.adopt(p)
	e.log.Info("app started", "app", spec.Name, "pid", p.Pid, "args", strings.Join(spec.Args, " "))
	return st, nil
}

// adopt reaps an init this process started when it exits.
func (e *Engine) adopt(p *shim.Process) {
	e.mu.Lock()
	e.children[p.Pid] = p
	e.mu.Unlock()
	go func() {
		_, _ = p.Wait()
		e.mu.Lock()
		delete(e.children, p.Pid)
		e.mu.Unlock()
	}()
}

// App returns what this node records about an app.
func (e *Engine) App(name string) (*AppState, error) { return e.apps.load(name) }

// Apps lists the apps registered on this node.
func (e *Engine) Apps() ([]*AppState, error) {
	names, err := e.apps.list()
	if err != nil {
		return nil, err
	}
	out := make([]*AppState, 0, len(names))
	for _, n := range names {
		st, err := e.apps.load(n)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Running reports whether the app's init is alive.
func (st *AppState) Running() bool { return alive(st.Pid) }

// Stop kills the app's whole tree (its PID namespace dies with its init).
// Epochs are kept.
func (e *Engine) Stop(ctx context.Context, name string) error {
	unlock, err := e.apps.lock(name)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := e.apps.load(name)
	if err != nil {
		return err
	}
	if err := e.kill(ctx, st); err != nil {
		return err
	}
	st.Pid = 0
	return e.apps.save(st)
}

// kill SIGKILLs the app's init and waits until it is gone.
func (e *Engine) kill(ctx context.Context, st *AppState) error {
	if !alive(st.Pid) {
		return nil
	}
	if st.Cgroup != "" {
		// A frozen task does not die until thawed.
		if cg, err := freezer.Open(e.cfg.Freezer, st.Spec.Name); err == nil {
			_ = cg.Thaw()
		}
	}
	if err := unix.Kill(st.Pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill app %s pid %d: %w", st.Spec.Name, st.Pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for alive(st.Pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("app %s pid %d did not exit after SIGKILL: %w", st.Spec.Name, st.Pid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// Epochs lists the app's complete epochs, oldest first.
func (e *Engine) Epochs(name string) ([]store.Manifest, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	ns, err := e.store.Epochs(name)
	if err != nil {
		return nil, err
	}
	out := make([]store.Manifest, 0, len(ns))
	for _, n := range ns {
		ep, err := e.store.Load(name, n)
		if errors.Is(err, store.ErrNoEpoch) {
			continue // collected since it was listed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ep.Manifest)
	}
	return out, nil
}
