package criu

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Sentinels for what callers branch on. A failed Dump, PreDump or Restore
// returns an *Error that matches (errors.Is) the sentinel of its operation
// and, when CRIU's log says why, a more specific one.
var (
	// ErrDump, ErrPreDump and ErrRestore mark a failed operation.
	ErrDump    = errors.New("criu dump failed")
	ErrPreDump = errors.New("criu pre-dump failed")
	ErrRestore = errors.New("criu restore failed")

	// ErrUnsupported means this host's kernel or CRIU lacks a feature the
	// request needs (for example mem_dirty_track for pre-dumps). Retrying
	// will not help; use the fallback.
	ErrUnsupported = errors.New("criu feature unsupported on this host")
	// ErrNoProcess means the tree to dump does not exist (any more).
	ErrNoProcess = errors.New("no such process")
	// ErrHook means a notification hook returned an error, which aborted
	// the operation; a dump aborted this way leaves the tree running.
	ErrHook = errors.New("criu notification hook failed")
	// ErrFileChanged means a file the tree had open differs from the dump
	// (size or mode) or is missing: it must be restored from the matching
	// data-file state, or handed over with inherit-fd (logs: see
	// RestoreOptions.AppendFiles).
	ErrFileChanged = errors.New("file changed since the dump")
	// ErrPIDInUse means a PID the restore needs is taken. Trees started by
	// replicate/shim restore into a fresh PID namespace and never hit it.
	ErrPIDInUse = errors.New("pid already in use")
	// ErrAddrInUse means a socket of the tree cannot be bound again, for
	// example because the original tree still runs on this node.
	ErrAddrInUse = errors.New("address already in use")
	// ErrBusy means another dump was working in the same working directory
	// of a task (CRIU mounts a private /proc there for a moment): a CRIU
	// run by something else than this package, or a proc.crtools left
	// behind by a crashed one. Retry; if it persists, unmount and remove <cwd>/proc.crtools.
	ErrBusy = errors.New("concurrent dump in the same working directory")
	// ErrMPTCP means the tree has an MPTCP socket, which CRIU cannot dump.
	// Go 1.24+ programs open them for listeners unless started with
	// GODEBUG=multipathtcp=0 (replicate/shim sets it).
	ErrMPTCP = errors.New("MPTCP socket (for Go programs set GODEBUG=multipathtcp=0)")
)

// Error is a failed CRIU operation with the evidence CRIU left.
type Error struct {
	// Op is "dump", "pre-dump" or "restore".
	Op string
	// Pid is the root of the dumped tree; 0 for a restore.
	Pid int
	// ImagesDir is the images directory of the operation.
	ImagesDir string
	// Log is the path of CRIU's log file for this operation.
	Log string
	// Lines are the Error lines of the log, in order.
	Lines []string
	// Err is what failed: go-criu's RPC error, a hook's error, or both.
	Err error

	op   error // ErrDump, ErrPreDump or ErrRestore
	kind error // a more specific sentinel, or nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("criu ")
	b.WriteString(e.Op)
	if e.Pid > 0 {
		fmt.Fprintf(&b, " pid %d", e.Pid)
	}
	if e.kind != nil {
		b.WriteString(": ")
		b.WriteString(e.kind.Error())
	}
	// CRIU's Error lines say more than go-criu's summary of them (which
	// quotes only the first line of the log, often a benign one); a
	// hook's error is the cause whatever the log says.
	if e.Err != nil && (len(e.Lines) == 0 || errors.Is(e.kind, ErrHook)) {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if len(e.Lines) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Lines, "; "))
	}
	if e.Log != "" {
		fmt.Fprintf(&b, " (log %s)", e.Log)
	}
	return b.String()
}

// Unwrap lets errors.Is match the operation's sentinel, the specific one,
// and whatever Err wraps (a hook's error, context.Canceled, ...).
func (e *Error) Unwrap() []error {
	out := []error{e.op}
	if e.kind != nil {
		out = append(out, e.kind)
	}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

// benignErrors are Error lines CRIU logs on every run on this platform
// without failing; they would only hide the real cause.
var benignErrors = []string{
	"Can't setup RLIMIT_NOFILE for self",
}

// causes maps CRIU's Error lines to sentinels: a line matches when it
// holds every fragment; the first cause with a matching line wins.
var causes = []struct {
	fragments []string
	kind      error
}{
	{[]string{"has bad size"}, ErrFileChanged},
	{[]string{"has bad mode"}, ErrFileChanged},
	{[]string{"Can't open file", "No such file or directory"}, ErrFileChanged},
	{[]string{"Unsupported proto 262"}, ErrMPTCP},
	{[]string{"Can't create a directory (-17)"}, ErrBusy},
	{[]string{"Can't remove tmp dir proc.crtools"}, ErrBusy},
	{[]string{"Address already in use"}, ErrAddrInUse},
	{[]string{"No process with such pid"}, ErrNoProcess},
	{[]string{"fork", "File exists"}, ErrPIDInUse},
	{[]string{"clone", "File exists"}, ErrPIDInUse},
}

// logErrors returns the Error lines of CRIU's log at path, without the
// benign ones. A missing log yields nothing.
func logErrors(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "Error") {
			continue
		}
		l = strings.TrimSpace(l)
		benign := false
		for _, f := range benignErrors {
			if strings.Contains(l, f) {
				benign = true
				break
			}
		}
		if !benign {
			out = append(out, l)
		}
	}
	return out
}

// classify picks the specific sentinel for a failure from CRIU's lines.
func classify(lines []string) error {
	for _, c := range causes {
		for _, l := range lines {
			all := true
			for _, f := range c.fragments {
				if !strings.Contains(l, f) {
					all = false
					break
				}
			}
			if all {
				return c.kind
			}
		}
	}
	return nil
}

// newError builds the error of a failed operation from go-criu's error,
// the hook's error (if a hook aborted it) and CRIU's log.
func newError(op string, opErr error, pid int, imagesDir, log string, rpcErr, hookErr error) *Error {
	lines := logErrors(log)
	e := &Error{Op: op, Pid: pid, ImagesDir: imagesDir, Log: log, Lines: lines, op: opErr}
	switch {
	case hookErr != nil:
		e.kind = ErrHook
		// go-criu returns the hook's error, possibly joined with the
		// service's exit status; keep the hook's first.
		if rpcErr != nil && !errors.Is(rpcErr, hookErr) {
			e.Err = errors.Join(hookErr, rpcErr)
		} else {
			e.Err = hookErr
		}
	default:
		e.kind = classify(lines)
		e.Err = rpcErr
	}
	return e
}
