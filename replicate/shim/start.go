package shim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNoCommand means StartOptions.Args is empty.
var ErrNoCommand = errors.New("shim: no command")

// StartOptions describes an application to start under the init.
type StartOptions struct {
	// Exe is the init binary: the doppel executable, installed with
	// InstallExe so that the same bytes exist at the same path on every node
	// where the application may be restored. Required.
	Exe string
	// Args is the application's command line; Args[0] is looked up in PATH
	// by the init. Required.
	Args []string
	// Dir is the working directory; empty means the caller's.
	Dir string
	// Env is the application's environment; nil means the caller's. Unless
	// KeepMPTCP is set, GODEBUG gains multipathtcp=0 (see KeepMPTCP).
	Env []string
	// KeepMPTCP leaves the environment exactly as given. By default Start
	// adds multipathtcp=0 to GODEBUG: Go 1.24 and later open MPTCP sockets
	// for listeners, which CRIU cannot dump ("Unsupported proto 262"). The
	// setting only affects Go programs.
	KeepMPTCP bool
	// Stdin, Stdout and Stderr are the application's standard files; nil
	// means /dev/null. Applications run without a terminal: pass log files
	// opened with O_APPEND for output, and hand the same paths to the CRIU
	// restore so a log that grew after a checkpoint does not break it.
	Stdin, Stdout, Stderr *os.File
	// NewIPC starts the init in a new IPC namespace as well, so that the
	// application's System V IPC objects (shared memory segments,
	// semaphores, message queues) are its own: CRIU checkpoints and
	// restores them only as part of an IPC namespace of the tree.
	NewIPC bool
	// BeforeApp, when set, runs with the init's host PID after the init
	// exists and before it starts the application, e.g. to put the init
	// into a cgroup that the whole tree must belong to. An error stops the
	// init and fails Start.
	BeforeApp func(pid int) error
}

// gateEnv names the descriptor on which the init waits for Start's go-ahead
// (see StartOptions.BeforeApp).
const gateEnv = "DOPPEL_SHIM_GATE"

// Process is an init started by Start: the root of the application's tree
// as seen from the host. Its methods are safe for concurrent use.
type Process struct {
	// Pid is the init's PID in the caller's PID namespace. Inside its own
	// namespace the init is PID 1; the application comes next, after the
	// IDs of the init's threads.
	Pid int

	proc     *os.Process
	waitOnce sync.Once
	state    *os.ProcessState
	waitErr  error
}

// Start starts opts.Args under a new init (`Exe init-shim -- Args...`) in a
// new PID namespace (and a new IPC namespace with NewIPC) and a new
// session, in the caller's mount, network and other namespaces. ctx bounds
// only the start: the application outlives it. The caller must eventually
// call Wait (or the init stays a zombie) and needs CAP_SYS_ADMIN for the
// namespaces.
func Start(ctx context.Context, opts StartOptions) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(opts.Args) == 0 {
		return nil, ErrNoCommand
	}
	return start(ctx, opts, append([]string{Subcommand, "--"}, opts.Args...), nil)
}

// start starts the init as `opts.Exe argv...`. extra are more descriptors
// for the init (numbered from 3, after the gate if any), each announced in
// its environment as KEY=FD.
func start(ctx context.Context, opts StartOptions, argv []string, extra map[string]*os.File) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Exe == "" {
		return nil, errors.New("shim: no init executable (StartOptions.Exe)")
	}
	what := "adopted tree"
	if len(opts.Args) > 0 {
		what = opts.Args[0]
	}
	cmd := exec.Command(opts.Exe, argv...)
	cmd.Dir = opts.Dir
	env := opts.Env
	if env == nil {
		env = os.Environ()
	}
	if !opts.KeepMPTCP {
		env = WithoutMPTCP(env)
	}
	cmd.Env = env
	var toClose []*os.File
	defer func() {
		for _, f := range toClose {
			_ = f.Close()
		}
	}()
	std := func(f *os.File, flag int) (*os.File, error) {
		if f != nil {
			return f, nil
		}
		n, err := os.OpenFile(os.DevNull, flag, 0)
		if err != nil {
			return nil, err
		}
		toClose = append(toClose, n)
		return n, nil
	}
	var err error
	if cmd.Stdin, err = std(opts.Stdin, os.O_RDONLY); err != nil {
		return nil, err
	}
	if cmd.Stdout, err = std(opts.Stdout, os.O_WRONLY); err != nil {
		return nil, err
	}
	if cmd.Stderr, err = std(opts.Stderr, os.O_WRONLY); err != nil {
		return nil, err
	}
	flags := uintptr(unix.CLONE_NEWPID)
	if opts.NewIPC {
		flags |= unix.CLONE_NEWIPC
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: flags,
		Setsid:     true,
	}
	var gate *os.File
	if opts.BeforeApp != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		toClose = append(toClose, r)
		gate = w
		defer gate.Close()
		cmd.ExtraFiles = []*os.File{r} // fd 3 in the init
		cmd.Env = append(cmd.Env, gateEnv+"=3")
	}
	for name, f := range extra {
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", name, 3+len(cmd.ExtraFiles)))
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	// Descriptors this process inherited without close-on-exec (from a
	// shell, a test runner) would leak into the app and tie it to
	// processes outside its tree, which CRIU refuses to checkpoint. The
	// init gets exactly its standard files and the gate.
	_ = unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s under %s: %w", what, opts.Exe, err)
	}
	p := &Process{Pid: cmd.Process.Pid, proc: cmd.Process}
	if opts.BeforeApp != nil {
		if err := opts.BeforeApp(p.Pid); err != nil {
			_ = p.Kill()
			_, _ = p.Wait()
			return nil, err
		}
		if _, err := gate.Write([]byte{1}); err != nil {
			_ = p.Kill()
			_, _ = p.Wait()
			return nil, fmt.Errorf("start %s: release init: %w", what, err)
		}
	}
	return p, nil
}

// Attach returns the Process of an init the caller did not start itself
// but must reap: the root of a tree restored by replicate/criu, which CRIU
// makes a child of the caller.
func Attach(pid int) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("shim: attach: bad pid %d", pid)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("shim: attach %d: %w", pid, err)
	}
	return &Process{Pid: pid, proc: proc}, nil
}

// Signal sends sig to the init, which forwards SIGTERM, SIGINT, SIGHUP,
// SIGUSR1 and SIGUSR2 to the application. SIGKILL ends the init and with it
// every process of the namespace.
func (p *Process) Signal(sig os.Signal) error {
	return p.proc.Signal(sig)
}

// Kill ends the whole tree: SIGKILL to the init tears down its namespace.
func (p *Process) Kill() error {
	return p.proc.Kill()
}

// Wait waits for the init to exit and reaps it. It returns the same state
// to every caller; the init's exit code is the application's.
func (p *Process) Wait() (*os.ProcessState, error) {
	p.waitOnce.Do(func() {
		p.state, p.waitErr = p.proc.Wait()
	})
	return p.state, p.waitErr
}

// WithoutMPTCP returns env with multipathtcp=0 added to GODEBUG, unless
// GODEBUG already sets multipathtcp. The last GODEBUG entry is the one
// that counts (as for exec.Cmd); env itself is not modified.
func WithoutMPTCP(env []string) []string {
	out := append([]string(nil), env...)
	last := -1
	for i, kv := range out {
		if strings.HasPrefix(kv, "GODEBUG=") {
			last = i
		}
	}
	if last < 0 {
		return append(out, "GODEBUG=multipathtcp=0")
	}
	v := strings.TrimPrefix(out[last], "GODEBUG=")
	switch {
	case strings.Contains(v, "multipathtcp="):
	case v == "":
		out[last] = "GODEBUG=multipathtcp=0"
	default:
		out[last] = "GODEBUG=" + v + ",multipathtcp=0"
	}
	return out
}
