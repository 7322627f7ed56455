package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"doppel/introspect"
	"doppel/replicate/criu"
	"doppel/replicate/freezer"
	"doppel/replicate/shim"
)

// ErrCannotAdopt means the process given to Adopt cannot be adopted: it
// does not exist, is PID 1, is doppel itself or one of its ancestors,
// already belongs to an app, or lives in another PID namespace.
var ErrCannotAdopt = errors.New("cannot adopt")

// AdoptOptions are the caller's inputs to Adopt.
type AdoptOptions struct {
	// Pid is the root of the tree to adopt, in this process's PID
	// namespace.
	Pid int
	// Name is the app's name; empty means the process's command name
	// (lower-cased, other characters than those of ValidName replaced by
	// '-').
	Name string
	// DataPaths are the app's data files or directories, as in Spec.
	DataPaths []string
	// Register, when set, is called once the tree is in its new namespace
	// (still stopped) and the app is saved as running, with the app's lock
	// held, so that no other operation on the app (a checkpoint, a stop)
	// can start before it returns. The daemon registers the app in the
	// cluster here. An error puts the tree back like any other failure.
	Register func(ctx context.Context, st *AppState) error
}

// Adopt takes a process tree that runs in the host PID namespace (started
// without doppel) and makes it an app: the tree is dumped with CRIU (which
// ends it), then restored into fresh PID and IPC namespaces under a new
// init (replicate/shim), where each process keeps its PID, and the app is
// registered as running, as Run would have it. Its epochs are then taken
// of the whole namespace, as for any app.
//
// The tree's standard output and error, when they are regular files, stay
// the app's log files (handed over at every restore); otherwise the app
// directory's logs receive the init's own output.
//
// Before the dump nothing is changed: a tree that cannot be adopted
// (ErrCannotAdopt, a blocker found by introspect's preflight, a failed
// dump) keeps running as it was. If anything fails after the dump, the
// tree is restored from the same images into the host PID namespace, as a
// child of this process, and the first error is returned; only if that
// fails too is the tree lost, and the error names the kept images.
func (e *Engine) Adopt(ctx context.Context, opts AdoptOptions) (*AppState, error) {
	pid := opts.Pid
	if err := e.adoptable(pid); err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = AdoptName(pid)
		if err := ValidName(name); err != nil {
			return nil, fmt.Errorf("adopt pid %d: no usable name from its command %q: give one with --name", pid, name)
		}
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	dataPaths, err := cleanPaths(opts.DataPaths)
	if err != nil {
		return nil, err
	}
	unlock, err := e.apps.lock(name, true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var lastEpoch uint64
	old, err := e.apps.load(name)
	if err == nil {
		if old.Running() {
			return nil, fmt.Errorf("%w: %s runs as pid %d (choose another --name, or doppel stop %s first)", ErrAppExists, name, old.Pid, name)
		}
		lastEpoch = old.LastEpoch
	}

	// Preflight: a blocker must stop us before the dump ends the tree.
	icfg := e.cfg.Introspect
	icfg.DataPaths = dataPaths
	icfg.ShellJob = true // adoption dumps with --shell-job, restores into the init's session
	g, err := introspect.Scan(ctx, pid, icfg)
	if err != nil {
		return nil, fmt.Errorf("adopt pid %d: %w", pid, err)
	}
	if err := g.Check(); err != nil {
		return nil, fmt.Errorf("adopt pid %d: %w", pid, err)
	}

	exe, sum, err := shim.InstallExe(e.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	drv, _, err := e.criu(ctx)
	if err != nil {
		return nil, err
	}
	adrv, err := e.adoptDriver(drv, exe)
	if err != nil {
		return nil, err
	}
	cg, err := freezer.Open(e.cfg.Freezer, name)
	if err != nil {
		return nil, err
	}
	// A cgroup left frozen would freeze the tree as soon as it joins.
	if err := cg.Thaw(); err != nil {
		return nil, err
	}

	dir := e.apps.path(name)
	st := &AppState{
		Spec: Spec{
			Name: name, Args: procCmdline(pid), DataPaths: dataPaths,
		},
		InitExe:   exe,
		InitSum:   sum,
		Stdout:    filepath.Join(dir, "stdout.log"),
		Stderr:    filepath.Join(dir, "stderr.log"),
		Cgroup:    cg.Path,
		Started:   time.Now(),
		Term:      1,
		LastEpoch: lastEpoch,
	}
	st.Spec.Dir, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if p := regularFd(pid, 1); p != "" {
		st.Stdout = p
	}
	if p := regularFd(pid, 2); p != "" {
		st.Stderr = p
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

	work, err := os.MkdirTemp(e.cfg.WorkDir, "doppel-adopt-"+name+"-")
	if err != nil {
		return nil, err
	}
	keepWork := false
	defer func() {
		if !keepWork {
			os.RemoveAll(work)
		}
	}()
	imgDir := filepath.Join(work, "images")
	if err := os.Mkdir(imgDir, 0o700); err != nil {
		return nil, err
	}
	pids := treePids(pid, nil)

	// The dump ends the tree; from here on every failure puts it back.
	res, err := adrv.Dump(ctx, criu.DumpOptions{Pid: pid, ImagesDir: imgDir, WorkDir: work})
	if err != nil {
		if res != nil && res.Log != "" {
			if kept := e.keepLog(name, res.Log, "adopt-dump-failed.log"); kept != "" {
				return nil, fmt.Errorf("adopt pid %d: %w (CRIU's log kept as %s; the process runs on)", pid, err, kept)
			}
		}
		return nil, fmt.Errorf("adopt pid %d: %w (the process runs on)", pid, err)
	}
	var p *shim.Process
	rollback := func(cause error) (*AppState, error) {
		if p != nil {
			_ = p.Kill()
			_, _ = p.Wait()
		}
		if err := e.putBack(context.WithoutCancel(ctx), adrv, imgDir, work, pids); err != nil {
			keepWork = true
			e.log.Error("adopt: the tree could not be put back", "app", name, "pid", pid, "err", err, "images", imgDir)
			return nil, fmt.Errorf("adopt pid %d: %w; putting the process back failed too: %v (its images are kept in %s)", pid, cause, err, imgDir)
		}
		return nil, fmt.Errorf("adopt pid %d: %w (the process was put back and runs as before, now as a child of doppel)", pid, cause)
	}

	restoreCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	p, err = shim.StartAdopt(restoreCtx, shim.StartOptions{
		Exe: exe, Stdout: stdout, Stderr: stderr,
		NewIPC: true,
		// The init joins the cgroup before CRIU runs, so the restored tree
		// (CRIU ignores the dumped cgroups) is born in it.
		BeforeApp: cg.Add,
	}, pid, adrv.AdoptRestoreArgs(imgDir, work))
	cancel()
	if err != nil {
		p = nil
		rerr := criu.AdoptRestoreError(imgDir, work, err)
		if kept := e.keepLog(name, rerr.Log, "adopt-restore-failed.log"); kept != "" {
			return rollback(fmt.Errorf("%w (CRIU's log kept as %s)", rerr, kept))
		}
		return rollback(rerr)
	}
	// The tree is stopped (CRIU's --leave-stopped) until everything else
	// is done, so that a failure can still put it back unchanged.
	if e.adoptFault != nil {
		if err := e.adoptFault("restored"); err != nil {
			return rollback(err)
		}
	}
	st.Pid, st.PidStart = p.Pid, procStart(p.Pid)
	tree := treePids(p.Pid, nil)
	if len(tree) < 2 {
		return rollback(fmt.Errorf("the restored tree is not under its init (pid %d)", p.Pid))
	}
	if err := e.ensureInCgroup(cg, st); err != nil {
		return rollback(err)
	}
	if err := e.apps.save(st); err != nil {
		return rollback(err)
	}
	if opts.Register != nil {
		if err := opts.Register(ctx, st); err != nil {
			if old != nil {
				_ = e.apps.save(old)
			} else {
				_ = os.Remove(filepath.Join(dir, "app.json"))
			}
			return rollback(err)
		}
	}
	for _, q := range tree[1:] {
		_ = unix.Kill(q, unix.SIGCONT)
	}
	e.adopt(p)
	e.log.Info("app adopted", "app", name, "pid", p.Pid, "root", tree[1], "was", pid, "dump", res.Wall)
	return st, nil
}

// adoptable refuses a PID that Adopt must not touch.
func (e *Engine) adoptable(pid int) error {
	switch {
	case pid <= 0:
		return fmt.Errorf("%w: bad pid %d", ErrCannotAdopt, pid)
	case pid == 1:
		return fmt.Errorf("%w: pid 1 is the system's init; adopt the process of the service instead", ErrCannotAdopt)
	case !alive(pid):
		return fmt.Errorf("%w: no process %d (see ps)", ErrCannotAdopt, pid)
	}
	self := os.Getpid()
	if slices.Contains(treePids(pid, nil), self) {
		return fmt.Errorf("%w: pid %d is doppel itself or one of its ancestors", ErrCannotAdopt, pid)
	}
	if a, b := nsOf(pid, "pid"), nsOf(self, "pid"); a == "" || a != b {
		return fmt.Errorf("%w: pid %d runs in another PID namespace (a container, or an app doppel manages already: see doppel ls)", ErrCannotAdopt, pid)
	}
	if sameExe(pid, self) {
		return fmt.Errorf("%w: pid %d is a doppel process", ErrCannotAdopt, pid)
	}
	apps, err := e.Apps()
	if err != nil {
		return err
	}
	for _, st := range apps {
		if st.Running() && slices.Contains(treePids(st.Pid, nil), pid) {
			return fmt.Errorf("%w: pid %d belongs to app %s already", ErrCannotAdopt, pid, st.Spec.Name)
		}
	}
	return nil
}

// adoptDriver returns a CRIU driver for adoption (see criu.AdoptRestoreArgs):
// its binary is a wrapper that runs drv's in a new UTS namespace, through
// the init executable, and it treats trees as shell jobs.
func (e *Engine) adoptDriver(drv *criu.Driver, exe string) (*criu.Driver, error) {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# doppel adopt: CRIU in a UTS namespace of its own\nexec")
	for _, a := range append([]string{exe}, shim.ExecNSArgs(shim.NSUTS, drv.Path())...) {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString(` "$@"` + "\n")
	bin := filepath.Join(e.cfg.StateDir, "bin")
	if err := os.MkdirAll(bin, 0o700); err != nil {
		return nil, err
	}
	wrapper := filepath.Join(bin, "criu-adopt")
	body := []byte(b.String())
	if old, err := os.ReadFile(wrapper); err != nil || !bytes.Equal(old, body) {
		if err := writeFileAtomic(wrapper, body, 0o700); err != nil {
			return nil, fmt.Errorf("adopt: criu wrapper: %w", err)
		}
	}
	cfg := drv.Config()
	cfg.Path = wrapper
	cfg.ShellJob = true
	return criu.New(cfg)
}

// putBack restores an adopted tree's images into the host PID namespace,
// in its old cgroups, once its PIDs are free again (its parent must reap
// what the dump killed).
func (e *Engine) putBack(ctx context.Context, drv *criu.Driver, imgDir, work string, pids []int) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && slices.ContainsFunc(pids, pidTaken) {
		time.Sleep(10 * time.Millisecond)
	}
	dir := filepath.Join(work, "put-back")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	res, err := drv.Restore(ctx, criu.RestoreOptions{ImagesDir: imgDir, WorkDir: dir, DumpedCgroups: true, JoinNs: criu.HostJoinNs(os.Getpid())})
	if err != nil {
		return err
	}
	// The tree is our child now: reap it when it ends.
	if p, err := shim.Attach(res.Pid); err == nil {
		e.adopt(p)
	}
	e.log.Warn("adopt failed: tree put back in the host PID namespace", "pid", res.Pid)
	return nil
}

// pidTaken reports whether pid is taken, zombies included.
func pidTaken(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// nsOf returns the namespace link of pid's namespace kind, "" if unknown.
func nsOf(pid int, kind string) string {
	s, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	return s
}

// sameExe reports whether two processes run the same executable file.
func sameExe(a, b int) bool {
	fa, err := os.Stat(fmt.Sprintf("/proc/%d/exe", a))
	if err != nil {
		return false
	}
	fb, err := os.Stat(fmt.Sprintf("/proc/%d/exe", b))
	return err == nil && os.SameFile(fa, fb)
}

// regularFd returns the path of pid's descriptor fd if it is a regular
// file, "" otherwise.
func regularFd(pid, fd int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil || !filepath.IsAbs(p) || strings.HasSuffix(p, " (deleted)") {
		return ""
	}
	if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	return p
}

// procCmdline returns pid's command line.
func procCmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// AdoptName is the name Adopt gives the app of pid when AdoptOptions.Name
// is empty: its command name, lower-cased, with the characters ValidName
// refuses replaced by '-'.
func AdoptName(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	s := strings.ToLower(strings.TrimSpace(string(b)))
	out := []byte(s)
	for i, c := range out {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			out[i] = '-'
		}
	}
	return strings.Trim(string(out), "-._")
}

// cleanPaths makes data paths absolute and clean.
func cleanPaths(paths []string) ([]string, error) {
	out := make([]string, len(paths))
	for i, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		out[i] = filepath.Clean(abs)
	}
	return out, nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
