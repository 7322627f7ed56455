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
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
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
	// NoStandby turns off the restore-ready copy a clone keeps of each
	// app's newest epoch in WorkDir (see Engine.Standby): less memory on
	// a tmpfs, slower restores.
	NoStandby bool
}

// DefaultConfig is the production configuration under /var/lib/doppel.
func DefaultConfig() Config {
	st := store.DefaultConfig()
	return Config{
		StateDir: "/var/lib/doppel",
		CRIU:     criu.DefaultConfig(),
		Store:    st,
		Freezer:  freezer.DefaultConfig(),
		// The RM scan runs while the app is frozen: keep what verdicts
		// need, skip page-table walks and per-thread details.
		Introspect:    introspect.CheckpointConfig(),
		FreezeTimeout: 10 * time.Second,
	}
}

// Engine runs, checkpoints and restores the apps of one node. Its methods
// are safe for concurrent use; operations on one app are serialised by a
// lock file, so two processes (a daemon and a CLI) cannot interleave them.
type Engine struct {
	cfg    Config
	log    *slog.Logger
	apps   apps
	store  *store.Store
	kernel string // uname release, set once by New

	criuMu sync.Mutex // guards the fields below
	// drv is the node's one CRIU driver (it serialises dumps that share a
	// working directory and caches feature probes); nil until first use.
	drv *criu.Driver
	// criuVersion is the version of drv's binary.
	criuVersion string

	mu sync.Mutex // guards children
	// children are inits this process started and must reap.
	children map[int]*shim.Process

	// adoptFault, set by tests, fails Adopt at a named step.
	adoptFault func(step string) error

	workLock *os.File // held on the work directory's lock file while the engine lives
	standby  standbys // restore-ready copies of received epochs
	scanners scanners // the RM phase's Scanner of each app

	gcMu      sync.Mutex // guards gcRunning and gcAgain
	gcRunning bool       // a background GC runs
	gcAgain   bool       // another epoch was committed since it started
	gcDone    sync.WaitGroup
	gcCtx     context.Context // cancelled by Close
	gcCancel  context.CancelFunc
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
	if cfg.Freezer.Parent == freezer.DefaultConfig().Parent {
		// Several engines on one machine (nodes of a test cluster, a demo)
		// must never share an app's freezer cgroup: one per state
		// directory.
		sum := sha256.Sum256([]byte(cfg.StateDir))
		cfg.Freezer.Parent = path.Join(cfg.Freezer.Parent, hex.EncodeToString(sum[:4]))
	}
	cfg.Store.Logger = log
	st, err := store.Open(filepath.Join(cfg.StateDir, "store"), cfg.Store)
	if err != nil {
		return nil, err
	}
	// After the store, whose lock keeps a second engine of this state
	// directory out before it touches the work directory.
	root, workLock, err := openWorkRoot(cfg.WorkDir, cfg.StateDir, log)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("work directory: %w", err)
	}
	cfg.WorkDir = root
	e := &Engine{
		cfg:      cfg,
		log:      log,
		apps:     apps{dir: filepath.Join(cfg.StateDir, "apps")},
		store:    st,
		children: map[int]*shim.Process{},
		workLock: workLock,
	}
	e.standby.root = filepath.Join(cfg.WorkDir, "standby")
	e.gcCtx, e.gcCancel = context.WithCancel(context.Background())
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.kernel = unix.ByteSliceToString(u.Release[:])
	}
	e.thawAbandoned()
	return e, nil
}

// thawAbandoned thaws every app that a checkpoint left frozen when its
// process died in the middle (nobody holds the app's lock any more). Apps
// whose lock is held are being worked on and left alone.
func (e *Engine) thawAbandoned() {
	names, err := e.apps.list()
	if err != nil {
		return
	}
	for _, name := range names {
		unlock, err := e.apps.lock(name, false)
		if err != nil {
			continue
		}
		if st, err := e.apps.load(name); err == nil {
			e.thawIfAbandoned(st)
		}
		unlock()
	}
}

// thawIfAbandoned thaws the app if a checkpoint froze it and its process
// died before thawing it: the marker that checkpoint wrote is still there.
// The caller holds the app's lock, so no checkpoint of it is in progress.
// An app frozen on purpose (Engine.Freeze) has no marker and stays frozen.
func (e *Engine) thawIfAbandoned(st *AppState) {
	marker := e.frozenMarker(st.Spec.Name)
	if _, err := os.Stat(marker); err != nil {
		return
	}
	cg, err := freezer.Open(e.cfg.Freezer, st.Spec.Name)
	if err != nil {
		return
	}
	if err := cg.Thaw(); err != nil {
		e.log.Error("cannot thaw app left frozen by an interrupted checkpoint", "app", st.Spec.Name, "err", err)
		return
	}
	_ = os.Remove(marker)
	e.log.Warn("thawed app left frozen by an interrupted checkpoint", "app", st.Spec.Name, "pid", st.Pid)
}

// frozenMarker is the file that exists while a checkpoint holds the app
// frozen.
func (e *Engine) frozenMarker(name string) string {
	return filepath.Join(e.apps.path(name), "checkpoint-frozen")
}

// Close stops a background GC (at a safe point), waits for it and releases
// the store. Apps keep running.
func (e *Engine) Close() error {
	e.scanners.drop("")
	e.gcCancel()
	e.gcDone.Wait()
	err := e.store.Close()
	// Nothing in the work directory outlives the engine (standby copies
	// are in memory only; no dump or restore runs once the node stops).
	if rerr := os.RemoveAll(e.cfg.WorkDir); rerr != nil {
		e.log.Warn("cannot remove the work directory", "dir", e.cfg.WorkDir, "err", rerr)
	}
	e.workLock.Close()
	// The freezer cgroups of the apps not running here (moved away,
	// stopped, never restored) would otherwise pile up, one per app and
	// state directory; a running app's stays.
	if serr := freezer.Sweep(e.cfg.Freezer); serr != nil {
		e.log.Warn("cannot sweep the freezer cgroups", "err", serr)
	}
	return err
}

// startGC runs the store's GC in the background after a commit. One runs at
// a time; a commit while it runs makes it run once more.
func (e *Engine) startGC() {
	e.gcMu.Lock()
	defer e.gcMu.Unlock()
	if e.gcRunning {
		e.gcAgain = true
		return
	}
	e.gcRunning = true
	e.gcDone.Add(1)
	go func() {
		defer e.gcDone.Done()
		for {
			st, err := e.store.GC(e.gcCtx)
			if err != nil && e.gcCtx.Err() == nil {
				e.log.Warn("store gc failed", "err", err)
			} else if err == nil {
				e.log.Debug("store gc", "epochs_deleted", st.EpochsDeleted, "bytes", st.BytesReclaimed, "took", st.Duration)
			}
			e.gcMu.Lock()
			if !e.gcAgain || e.gcCtx.Err() != nil {
				e.gcRunning = false
				e.gcMu.Unlock()
				return
			}
			e.gcAgain = false
			e.gcMu.Unlock()
		}
	}()
}

// waitGC waits until no background GC runs.
func (e *Engine) waitGC() { e.gcDone.Wait() }

// Store is the engine's epoch store (for the wire and export).
func (e *Engine) Store() *store.Store { return e.store }

// criu returns the node's CRIU driver and the version of its binary,
// locating and checking CRIU on first use. A failure is not cached: the
// next call tries again (CRIU may have been installed meanwhile).
func (e *Engine) criu(ctx context.Context) (*criu.Driver, string, error) {
	e.criuMu.Lock()
	defer e.criuMu.Unlock()
	if e.drv != nil {
		return e.drv, e.criuVersion, nil
	}
	p, err := criu.Locate(e.cfg.CRIU.Path, e.cfg.CRIU.Prefix)
	if err != nil {
		return nil, "", err
	}
	v, err := criu.BinaryVersion(ctx, p)
	if err != nil {
		return nil, "", err
	}
	if v.Less(criu.MinVersion) {
		return nil, "", fmt.Errorf("%w: %s is %s (run: sudo scripts/get-criu.sh)", criu.ErrTooOld, p, v)
	}
	c := e.cfg.CRIU
	c.Path = p
	drv, err := criu.New(c)
	if err != nil {
		return nil, "", err
	}
	e.drv, e.criuVersion = drv, v.String()
	return e.drv, e.criuVersion, nil
}

// Run starts an app under a new init in new PID and IPC namespaces (so that
// its System V IPC objects are its own and travel with its epochs), in the
// app's freezer cgroup, and registers it. Its stdout and stderr go to log
// files in the app's directory. An app of that name that is registered but
// not running is replaced; its epochs are kept and numbering continues.
func (e *Engine) Run(ctx context.Context, spec Spec) (*AppState, error) {
	if err := ValidName(spec.Name); err != nil {
		return nil, err
	}
	if len(spec.Args) == 0 {
		return nil, errors.New("no command: give it after --, e.g. doppel run NAME -- CMD ARGS")
	}
	spec.DataPaths = append([]string(nil), spec.DataPaths...)
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
	unlock, err := e.apps.lock(spec.Name, true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var lastEpoch uint64
	if old, err := e.apps.load(spec.Name); err == nil {
		if old.Running() {
			return nil, fmt.Errorf("%w: %s runs as pid %d (doppel stop %s first)", ErrAppExists, spec.Name, old.Pid, spec.Name)
		}
		lastEpoch = old.LastEpoch
	}
	exe, sum, err := shim.InstallExe(e.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	dir := e.apps.path(spec.Name)
	st := &AppState{
		Spec:      spec,
		InitExe:   exe,
		InitSum:   sum,
		Stdout:    filepath.Join(dir, "stdout.log"),
		Stderr:    filepath.Join(dir, "stderr.log"),
		Started:   time.Now(),
		Term:      1,
		LastEpoch: lastEpoch,
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
	// A cgroup left frozen would freeze the new app as soon as it joins.
	if err := cg.Thaw(); err != nil {
		return nil, err
	}
	st.Cgroup = cg.Path
	p, err := shim.Start(ctx, shim.StartOptions{
		Exe: exe, Args: spec.Args, Dir: spec.Dir, Env: spec.Env,
		Stdout: stdout, Stderr: stderr,
		NewIPC: true,
		// The whole tree must be in the cgroup: the init joins it before
		// it starts the app.
		BeforeApp: cg.Add,
	})
	if err != nil {
		return nil, err
	}
	st.Pid, st.PidStart = p.Pid, procStart(p.Pid)
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

// Running reports whether the app's init is alive (and is still the
// process that was started or restored, not another one that reuses its
// PID).
func (st *AppState) Running() bool {
	if !alive(st.Pid) {
		return false
	}
	return st.PidStart == 0 || procStart(st.Pid) == st.PidStart
}

// Stop kills the app's whole tree (its PID namespace dies with its init), as
// a machine failure would: every process is stopped first and its TCP
// connections are switched to repair mode, so that the peers see neither a
// FIN nor a reset and a restore from an epoch can resume the connections.
// Epochs are kept. Stopping an app that is not running only records it so.
func (e *Engine) Stop(ctx context.Context, name string) error {
	unlock, err := e.apps.lock(name, false)
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
	_ = os.Remove(e.frozenMarker(name))
	e.scanners.drop(name)
	st.Pid, st.PidStart = 0, 0
	return e.apps.save(st)
}

// kill SIGKILLs every process of the app, quietly for its TCP peers (see
// Stop), and waits until the init is gone.
func (e *Engine) kill(ctx context.Context, st *AppState) error {
	if !st.Running() {
		return nil
	}
	name := st.Spec.Name
	var cg *freezer.Cgroup
	if st.Cgroup != "" {
		cg, _ = freezer.Open(e.cfg.Freezer, name)
	}
	pids := []int{st.Pid}
	if cg != nil {
		fctx, cancel := context.WithTimeout(ctx, e.cfg.FreezeTimeout)
		err := cg.Freeze(fctx)
		cancel()
		if err != nil {
			e.log.Warn("cannot freeze app before killing it: its TCP peers may see the connections close", "app", name, "err", err)
		} else {
			pids = treePids(st.Pid, cg)
			if n, failed, err := repairTCP(pids); failed > 0 {
				e.log.Warn("some TCP connections could not be switched to repair mode: their peers see them close", "app", name, "switched", n, "failed", failed, "err", err)
			}
		}
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			if pid == st.Pid {
				if cg != nil {
					_ = cg.Thaw()
				}
				return fmt.Errorf("kill app %s pid %d: %w", name, pid, err)
			}
		}
	}
	// A frozen task does not die until thawed; it dies before it runs
	// another instruction of its own.
	if cg != nil {
		if err := cg.Thaw(); err != nil {
			e.log.Warn("thaw to kill", "app", name, "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for st.Running() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("app %s pid %d did not exit after SIGKILL: %w (%s)", name, st.Pid, ctx.Err(), describeTasks(treePids(st.Pid, cg)))
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
