package shim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Arguments of the init's helper modes (after Subcommand).
const (
	// adoptFlag makes the init adopt a dumped tree instead of starting a
	// command: `init-shim --adopt PID -- CRIU restore ARGS...`.
	adoptFlag = "--adopt"
	// execNSFlag runs a program in new namespaces:
	// `init-shim --exec-ns KIND -- PROG ARGS...` (see ExecNS).
	execNSFlag = "--exec-ns"
)

// Kinds of ExecNS.
const (
	// NSUTS runs the program in a new UTS namespace (a copy of the
	// caller's host and domain names).
	NSUTS = "uts"
	// NSProc runs the program in a private copy of the caller's mount
	// namespace in which /proc is a fresh proc mount, so that it matches
	// the caller's PID namespace.
	NSProc = "proc"
)

// ExitAdoptFailed is the init's exit code when the restore of the adopted
// tree failed.
const ExitAdoptFailed = 125

// statusEnv names the descriptor on which an adopting init reports the
// restore's outcome: "ok" or an error message, one line.
const statusEnv = "DOPPEL_SHIM_STATUS"

// ExecNSArgs returns the arguments after the init executable that run
// prog with args in new namespaces of the given kind (NSUTS or NSProc):
// exec.Command(exe, ExecNSArgs(...)...). The init executable replaces itself
// with prog, which keeps every descriptor it inherited without
// close-on-exec.
func ExecNSArgs(kind, prog string, args ...string) []string {
	return append([]string{Subcommand, execNSFlag, kind, "--", prog}, args...)
}

// mainExecNS enters the namespaces and execs the program.
func mainExecNS(args []string) int {
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintf(os.Stderr, "doppel %s: usage: doppel %s %s uts|proc -- PROG [ARGS...]\n", Subcommand, Subcommand, execNSFlag)
		return ExitUsage
	}
	kind, argv := args[0], args[2:]
	// Namespaces are entered by this thread, which then execs: the new
	// program inherits the thread's namespaces.
	runtime.LockOSThread()
	var err error
	switch kind {
	case NSUTS:
		err = unix.Unshare(unix.CLONE_NEWUTS)
	case NSProc:
		err = unix.Unshare(unix.CLONE_NEWNS)
		if err == nil {
			err = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
		}
		if err == nil {
			err = unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}
	default:
		err = fmt.Errorf("unknown namespace kind %q", kind)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "doppel %s: %s namespace: %v\n", Subcommand, kind, err)
		return ExitCannotExec
	}
	path, err := exec.LookPath(argv[0])
	if err == nil {
		err = syscall.Exec(path, argv, os.Environ())
	}
	fmt.Fprintf(os.Stderr, "doppel %s: exec %s: %v\n", Subcommand, argv[0], err)
	return ExitCannotExec
}

// mainAdopt is the init of an adopted tree: it runs the CRIU restore of
// the tree (args: the tree's root PID, "--", the criu command line) inside
// its PID namespace, as its own child, so that the restored root becomes
// its child and joins its session and process group; it reports the
// outcome on the status descriptor, then behaves as Main does for a command
// it started.
func mainAdopt(args []string) int {
	fail := func(status *os.File, format string, a ...any) int {
		msg := fmt.Sprintf(format, a...)
		fmt.Fprintf(os.Stderr, "doppel %s: %s\n", Subcommand, msg)
		if status != nil {
			fmt.Fprintln(status, strings.ReplaceAll(msg, "\n", " "))
			status.Close()
		}
		return ExitAdoptFailed
	}
	var status *os.File
	if v, ok := os.LookupEnv(statusEnv); ok {
		os.Unsetenv(statusEnv)
		if fd, err := strconv.Atoi(v); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
			status = os.NewFile(uintptr(fd), "status")
		}
	}
	if len(args) < 3 || args[1] != "--" {
		return fail(status, "usage: doppel %s %s PID -- CRIU restore ARGS...", Subcommand, adoptFlag)
	}
	pid, err := strconv.Atoi(args[0])
	if err != nil || pid <= 1 {
		return fail(status, "bad pid %q", args[0])
	}
	runtime.GOMAXPROCS(1)
	if os.Getpid() != 1 {
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}
	if err := waitGate(); err != nil {
		return fail(status, "%v", err)
	}
	closeInherited()

	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, append([]os.Signal{unix.SIGCHLD}, forwarded...)...)
	defer signal.Stop(sigs)

	// CRIU needs a /proc of this PID namespace; the init and the restored
	// tree stay in the host's mount namespace (CRIU joins it back for the
	// tree, see criu.Driver.AdoptRestoreArgs).
	argv := append([]string{"/proc/self/exe"}, ExecNSArgs(NSProc, args[2], args[3:]...)...)
	criuPid, err := syscall.ForkExec("/proc/self/exe", argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
	})
	if err != nil {
		return fail(status, "start criu: %v", err)
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(criuPid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fail(status, "wait for criu: %v", err)
		}
		break
	}
	if code := exitCode(ws); code != 0 {
		return fail(status, "criu restore exited with status %d", code)
	}
	// The root must now be our child, stopped until the caller resumes it.
	if p, err := unix.Wait4(pid, &ws, unix.WNOHANG|unix.WUNTRACED, nil); err != nil || p == pid && (ws.Exited() || ws.Signaled()) {
		return fail(status, "criu restored no process %d under the init (%v)", pid, err)
	}
	if status != nil {
		fmt.Fprintln(status, "ok")
		status.Close()
	}
	for {
		if code, done := reap(pid); done {
			return code
		}
		sig := <-sigs
		if sig == unix.SIGCHLD {
			continue
		}
		if s, ok := sig.(syscall.Signal); ok {
			_ = unix.Kill(pid, s)
		}
	}
}

// StartAdopt starts an init in new PID and IPC namespaces (as Start does;
// opts.Args is ignored) that restores a tree dumped from the host PID
// namespace: restore is the criu command line (criu binary first, see
// criu.Driver.AdoptRestoreArgs), run by the init as its child in its PID
// namespace; pid is the tree's root, which keeps its PID inside the new
// namespace and becomes the init's child. opts.BeforeApp runs before the
// restore. StartAdopt returns once the restore succeeded; on failure the
// init is gone and the error carries its report.
func StartAdopt(ctx context.Context, opts StartOptions, pid int, restore []string) (*Process, error) {
	if len(restore) == 0 {
		return nil, errors.New("shim: adopt: no restore command")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	argv := append([]string{Subcommand, adoptFlag, strconv.Itoa(pid), "--"}, restore...)
	opts.Args = nil
	p, err := start(ctx, opts, argv, map[string]*os.File{statusEnv: w})
	w.Close()
	if err != nil {
		return nil, err
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	var msg string
	select {
	case msg = <-line:
	case <-ctx.Done():
		_ = p.Kill()
		_, _ = p.Wait()
		return nil, fmt.Errorf("adopt pid %d: %w", pid, ctx.Err())
	}
	if msg == "ok" {
		return p, nil
	}
	_ = p.Kill()
	st, _ := p.Wait()
	if msg == "" {
		msg = fmt.Sprintf("the init ended without a report (%v)", st)
	}
	return nil, fmt.Errorf("adopt pid %d: %s", pid, msg)
}
