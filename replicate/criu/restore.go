package criu

import (
	"context"
	"errors"
	"fmt"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// RestoreOptions describes one restore.
type RestoreOptions struct {
	// ImagesDir holds the images of a complete dump.
	ImagesDir string
	// WorkDir receives CRIU's log; empty means ImagesDir.
	WorkDir string
	// InheritFds hands open files to CRIU in place of resources recorded
	// in the images (--inherit-fd), by CRIU key: "pipe:[<ino>]",
	// "socket:[<ino>]", or FileKey(path) for a regular file. The caller
	// keeps ownership of the files; the restored tree gets duplicates.
	InheritFds map[string]*os.File
	// AppendFiles are regular files the tree only appends to, such as the
	// stdout and stderr logs replicate/shim gives an app. Each is opened
	// for append here (created if missing) and inherited, so a log that
	// grew after the dump, or that is shorter on this node, never fails
	// the restore (CRIU otherwise refuses a file whose size changed, see
	// ErrFileChanged). The tree continues writing at the end of this
	// node's copy.
	AppendFiles []string
	// External lists resources outside the tree to bind at restore
	// (--external), matching the dump's.
	External []string
	// DumpedCgroups puts the restored tree back into the cgroups recorded
	// at dump time (CRIU's soft mode) instead of leaving it in the
	// caller's: for a tree returned to where it was dumped.
	DumpedCgroups bool
	// JoinNs puts the restored tree into existing namespaces (--join-ns),
	// by kind ("uts", "time", "mnt", ...) to a namespace file.
	JoinNs map[string]string
	// Hooks are called at CRIU's notification points (see Hooks).
	Hooks Hooks
}

// RestoreResult is the restored tree and how the restore went.
type RestoreResult struct {
	// Pid is the restored root in the caller's PID namespace. A tree
	// dumped with its own PID namespace (replicate/shim) gets a fresh one:
	// inside it every task has its old PID, the host PIDs are new.
	Pid int
	// Process is the restored root. It is a child of the caller (CRIU's
	// RPC restore creates it as a sibling of the CRIU service), so the
	// caller must Wait on it to reap it.
	Process *os.Process
	// ImagesDir repeats the request; Log is CRIU's log file.
	ImagesDir string
	Log       string
	// Stats is CRIU's own account (stats-restore).
	Stats RestoreStats
	// Events are the notifications, timed from Started.
	Events Events
	// Started is when the call began; Wall is how long it took in all.
	Started time.Time
	Wall    time.Duration
}

// Restore re-creates the tree dumped in opts.ImagesDir, running, as a
// child of the caller. CRIU's RPC restore always detaches the tree from the
// CRIU service; its root's PID comes from the post-restore notification.
// The context is checked before the start and at every notification. On
// failure CRIU removes what it had restored, and the returned *Error
// carries CRIU's Error lines.
func (d *Driver) Restore(ctx context.Context, opts RestoreOptions) (*RestoreResult, error) {
	const op = "restore"
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("criu restore %s: %w", opts.ImagesDir, err)
	}
	if opts.ImagesDir == "" {
		return nil, errors.New("criu restore: no images directory")
	}
	workDir := opts.WorkDir
	if workDir == "" {
		workDir = opts.ImagesDir
	}
	logPath := filepath.Join(workDir, RestoreLog)

	dir, err := openDir(opts.ImagesDir)
	if err != nil {
		return nil, fmt.Errorf("criu restore: images: %w", err)
	}
	defer dir.Close()
	ro, err := d.cfg.rpcOpts()
	if err != nil {
		return nil, err
	}
	ro.ImagesDirFd = ptr(int32(dir.Fd()))
	if opts.WorkDir != "" {
		wd, err := openDir(opts.WorkDir)
		if err != nil {
			return nil, fmt.Errorf("criu restore: work dir: %w", err)
		}
		defer wd.Close()
		ro.WorkDirFd = ptr(int32(wd.Fd()))
	}
	ro.LogFile = ptr(RestoreLog)
	ro.External = opts.External
	for ns, file := range opts.JoinNs {
		ro.JoinNs = append(ro.JoinNs, &rpc.JoinNamespace{Ns: ptr(ns), NsFile: ptr(file)})
	}
	// The only mode the RPC service supports: the tree becomes the
	// caller's child.
	ro.RstSibling = ptr(true)
	// The dump recorded the tree's cgroups on its old node; they mean
	// nothing here (and on one machine hosting several nodes the old one's
	// may be frozen). The tree stays in the caller's cgroups; the engine
	// moves it into its own freezer cgroup once restored.
	ro.ManageCgroupsMode = ptr(rpc.CriuCgMode_IGNORE)
	if opts.DumpedCgroups {
		ro.ManageCgroupsMode = ptr(rpc.CriuCgMode_SOFT)
	}

	c := d.newCriu()
	for key, f := range opts.InheritFds {
		if f == nil {
			return nil, fmt.Errorf("criu restore: inherit-fd %q: nil file", key)
		}
		c.AddInheritFd(key, f)
	}
	appended := map[string]bool{}
	for _, path := range opts.AppendFiles {
		key, err := FileKey(path)
		if err != nil {
			return nil, fmt.Errorf("criu restore: append file %s: %w", path, err)
		}
		if appended[key] {
			continue // stdout and stderr may be one file
		}
		appended[key] = true
		if _, dup := opts.InheritFds[key]; dup {
			return nil, fmt.Errorf("criu restore: append file %s is also in InheritFds", path)
		}
		// The path is the one the app had where it was dumped; on this
		// node its directory may not exist yet.
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("criu restore: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("criu restore: append file: %w", err)
		}
		defer f.Close()
		c.AddInheritFd(key, f)
	}
	_ = os.Remove(logPath)

	start := time.Now()
	n := newNotifier(ctx, opts.Hooks, start)
	err = c.Restore(ro, n)
	wall := time.Since(start)
	events, pid, hookErr := n.result()
	res := &RestoreResult{
		Pid: pid, ImagesDir: opts.ImagesDir, Log: logPath,
		Events: events, Started: start, Wall: wall,
	}
	if err != nil || hookErr != nil {
		if pid > 0 && hookErr != nil {
			// A hook refused a tree CRIU had already created; CRIU
			// kills it, reap it here.
			reapQuietly(pid)
		}
		res.Pid = 0
		return res, newError(op, ErrRestore, 0, opts.ImagesDir, logPath, err, hookErr)
	}
	if pid <= 0 {
		return res, &Error{Op: op, ImagesDir: opts.ImagesDir, Log: logPath, Lines: logErrors(logPath),
			Err: errors.New("no post-restore notification: restored pid unknown"), op: ErrRestore}
	}
	if res.Process, err = os.FindProcess(pid); err != nil {
		return res, fmt.Errorf("criu restore: restored pid %d: %w", pid, err)
	}
	if res.Stats, err = readRestoreStats(workDir); err != nil {
		return res, fmt.Errorf("criu restore pid %d succeeded, but: %w", pid, err)
	}
	return res, nil
}

// reapQuietly waits for a child that is being killed, without blocking
// for long if it is not.
func reapQuietly(pid int) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		p, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if p == pid || err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
