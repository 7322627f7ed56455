// Package shim runs an application as the child of a small init process in
// a new PID namespace, so that checkpoint and restore never collide on PIDs:
// a restored tree gets a fresh PID namespace in which every process keeps the
// PID it had at dump time, whatever the host PIDs in use.
//
// The init is the doppel binary itself, run as the hidden subcommand
// `doppel init-shim -- CMD ARGS` (see Main). Start launches it with
// CLONE_NEWPID and setsid, in the host mount namespace: CRIU requires the
// session leader of a dumped tree to be inside the tree, and a new mount
// namespace would have to be handled as well.
package shim

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Subcommand is the argument that makes the doppel binary run Main. Start
// runs `Exe Subcommand -- Args...`.
const Subcommand = "init-shim"

// Exit codes of Main for its own failures, as a shell reports them.
const (
	// ExitUsage means Main was called without a command.
	ExitUsage = 2
	// ExitCannotExec means the command was found but could not be run.
	ExitCannotExec = 126
	// ExitNotFound means the command was not found.
	ExitNotFound = 127
)

// forwarded are the signals the init passes on to the application. A PID
// namespace init ignores signals sent from outside the namespace unless it
// installs a handler; Main installs one for each of these.
var forwarded = []os.Signal{
	unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2,
}

// Main is the init of an application's PID namespace: it starts args (an
// optional leading "--" is dropped) as its only direct child, forwards
// SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to it, reaps every process
// that ends up as its child (orphans of the namespace are reparented to it),
// and returns the child's exit status: its code, or 128+signal when it was
// killed by a signal. When the init returns and its caller exits, the kernel
// kills whatever is left in the namespace.
//
// Main is meant to run as the whole process (the doppel binary's hidden
// subcommand): it changes process-wide signal handling and GOMAXPROCS, and
// becomes a child subreaper when it is not PID 1 so that it also reaps
// orphans outside a PID namespace. It starts the child with fork/exec and no
// pidfd, so that the tree holds nothing CRIU has to special-case. Diagnostics
// go to standard error.
func Main(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case adoptFlag:
			return mainAdopt(args[1:])
		case execNSFlag:
			return mainExecNS(args[1:])
		}
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintf(os.Stderr, "doppel %s: usage: doppel %s -- CMD [ARGS...]\n", Subcommand, Subcommand)
		return ExitUsage
	}
	// One P is plenty for a process that waits on signals; it keeps the
	// runtime's footprint (and the image CRIU dumps) small.
	runtime.GOMAXPROCS(1)
	if os.Getpid() != 1 {
		// Outside a PID namespace, orphans of the tree go to the nearest
		// subreaper; make that us. Failure only means less tidy reaping.
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}

	if err := waitGate(); err != nil {
		fmt.Fprintf(os.Stderr, "doppel %s: %v\n", Subcommand, err)
		return ExitCannotExec
	}
	closeInherited()

	path, err := exec.LookPath(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "doppel %s: %v\n", Subcommand, err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return ExitNotFound
		}
		return ExitCannotExec
	}

	// Subscribe before the child exists so that neither its exit nor an
	// early signal can be missed.
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, append([]os.Signal{unix.SIGCHLD}, forwarded...)...)
	defer signal.Stop(sigs)

	pid, err := syscall.ForkExec(path, args, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "doppel %s: start %s: %v\n", Subcommand, args[0], err)
		if errors.Is(err, unix.ENOENT) {
			return ExitNotFound
		}
		return ExitCannotExec
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
			// ESRCH: the child is already gone and about to be reaped.
			_ = unix.Kill(pid, s)
		}
	}
}

// waitGate blocks until Start allows the application to start (one byte on
// the gate descriptor), then closes the descriptor and removes it from the
// environment, so the tree holds nothing of it.
func waitGate() error {
	v, ok := os.LookupEnv(gateEnv)
	if !ok {
		return nil
	}
	os.Unsetenv(gateEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("bad %s=%q", gateEnv, v)
	}
	var b [1]byte
	for {
		n, err := unix.Read(fd, b[:])
		if err == unix.EINTR {
			continue
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("wait for start: %w", err)
		}
		if n != 1 {
			return errors.New("start was cancelled")
		}
		return nil
	}
}

// closeInherited closes the descriptors above 2 that the init inherited
// from whoever started doppel (a shell's or a supervisor's stray pipes):
// the application would inherit them in turn, and a pipe or socket shared
// with a process outside the tree cannot be checkpointed. Inherited
// descriptors are exactly those without close-on-exec (they survived the
// exec); every descriptor the Go runtime opens has it, so those stay.
func closeInherited() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // closed already (the directory's own), or ours
		}
		unix.Close(fd)
	}
}

// reap collects every exited child without blocking. It reports the exit
// code of main once main has been collected.
func reap(main int) (code int, done bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			// ECHILD: no children at all; main cannot still be running.
			if err == unix.ECHILD {
				return ExitCannotExec, true
			}
			return 0, false
		}
		if pid == main {
			code = exitCode(ws)
			// Collect whatever else has already exited, then report.
			for {
				p, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
				if err == unix.EINTR {
					continue
				}
				if err != nil || p <= 0 {
					return code, true
				}
			}
		}
	}
}

// exitCode maps a wait status to a shell-style exit code.
func exitCode(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	default:
		return ExitCannotExec
	}
}
