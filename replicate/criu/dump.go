package criu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	gocriu "github.com/checkpoint-restore/go-criu/v8"
)

// DumpOptions describes one dump (or pre-dump) of a process tree.
type DumpOptions struct {
	// Pid is the root of the tree, in the caller's PID namespace: for an
	// app started by replicate/shim, the init's PID.
	Pid int
	// ImagesDir receives the images; it must exist and should be empty.
	ImagesDir string
	// WorkDir receives CRIU's log; empty means ImagesDir.
	WorkDir string
	// ParentDir holds the previous pre-dump of the same tree; only pages
	// changed since are written (--prev-images-dir). It needs soft-dirty
	// tracking (FeatureMemDirtyTrack): without it the call fails with
	// ErrUnsupported before anything runs. Absolute, or relative to
	// ImagesDir.
	ParentDir string
	// LeaveRunning thaws the tree after the dump instead of killing it.
	LeaveRunning bool
	// FreezeCgroup is the tree's freezer cgroup: CRIU stops the tree by
	// freezing it instead of seizing task by task, and when the caller froze
	// it beforehand (a barrier of its own), CRIU leaves it frozen after the
	// dump for the caller to thaw.
	FreezeCgroup string
	// External lists resources outside the tree that CRIU should record
	// as external (--external), e.g. "unix[<ino>]", "mnt[/path]:name".
	External []string
	// Hooks are called at CRIU's notification points (see Hooks).
	Hooks Hooks
}

// DumpResult is what a dump or pre-dump produced and how long it took.
type DumpResult struct {
	// Pid and ImagesDir repeat the request.
	Pid       int
	ImagesDir string
	// Log is CRIU's log file.
	Log string
	// Stats is CRIU's own account (stats-dump).
	Stats DumpStats
	// Events are the notifications, timed from Started.
	Events Events
	// Started is when the call began; Wall is how long it took in all,
	// including starting CRIU.
	Started time.Time
	Wall    time.Duration
}

// Setup is the time from the call until CRIU was about to freeze the tree
// (the pre-dump notification): starting the CRIU service and its checks.
func (r *DumpResult) Setup() time.Duration {
	d, _ := r.Events.At(EventPreDump)
	return d
}

// Barrier is the time from the call until every task of the tree was
// stopped: the pre-dump notification's arrival on the caller's clock plus
// CRIU's own freezing_time.
func (r *DumpResult) Barrier() time.Duration {
	d, ok := r.Events.At(EventPreDump)
	if !ok {
		return 0
	}
	return d + r.Stats.FreezingTime
}

// Capture is the time from the pre-dump notification until the images were
// written (post-dump notification): freezing and dumping everything.
func (r *DumpResult) Capture() time.Duration {
	d, _ := r.Events.Between(EventPreDump, EventPostDump)
	return d
}

// Finish is the time from the post-dump notification until the call
// returned: thawing (or killing) the tree, unlocking, writing stats.
func (r *DumpResult) Finish() time.Duration {
	d, ok := r.Events.At(EventPostDump)
	if !ok {
		return 0
	}
	return r.Wall - d
}

// Dump checkpoints the tree rooted at opts.Pid into opts.ImagesDir with a
// CRIU service process of its own. The context is checked before the start
// and at every notification; a cancelled context aborts the dump there
// (CRIU then thaws the tree). On failure the returned *Error carries CRIU's
// Error lines; with LeaveRunning false the tree is gone only if the dump
// succeeded.
func (d *Driver) Dump(ctx context.Context, opts DumpOptions) (*DumpResult, error) {
	return d.dump(ctx, nil, opts, false)
}

// dump runs a dump or a pre-dump, on c when a session provides one.
func (d *Driver) dump(ctx context.Context, c *gocriu.Criu, opts DumpOptions, pre bool) (*DumpResult, error) {
	op, opErr, logName := "dump", ErrDump, DumpLog
	if pre {
		op, opErr, logName = "pre-dump", ErrPreDump, PreDumpLog
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("criu %s pid %d: %w", op, opts.Pid, err)
	}
	if opts.Pid <= 0 {
		return nil, fmt.Errorf("criu %s: bad pid %d", op, opts.Pid)
	}
	if opts.ImagesDir == "" {
		return nil, fmt.Errorf("criu %s pid %d: no images directory", op, opts.Pid)
	}
	if pre {
		if err := d.require(ctx, FeatureMemDirtyTrack, "pre-dump"); err != nil {
			return nil, err
		}
	}
	var parent string
	if opts.ParentDir != "" {
		if err := d.require(ctx, FeatureMemDirtyTrack, "dump against parent images"); err != nil {
			return nil, err
		}
		var err error
		if parent, err = relativeParent(opts.ImagesDir, opts.ParentDir); err != nil {
			return nil, fmt.Errorf("criu %s pid %d: %w", op, opts.Pid, err)
		}
	}
	workDir := opts.WorkDir
	if workDir == "" {
		workDir = opts.ImagesDir
	}
	logPath := filepath.Join(workDir, logName)
	if !processExists(opts.Pid) {
		return nil, &Error{Op: op, Pid: opts.Pid, ImagesDir: opts.ImagesDir, op: opErr, kind: ErrNoProcess}
	}

	dir, err := openDir(opts.ImagesDir)
	if err != nil {
		return nil, fmt.Errorf("criu %s pid %d: images: %w", op, opts.Pid, err)
	}
	defer dir.Close()
	cwds := treeCwds(opts.Pid)
	unlock, err := d.dirs.lock(ctx, cwds)
	if err != nil {
		return nil, fmt.Errorf("criu %s pid %d: waiting for another dump in %v: %w", op, opts.Pid, cwds, err)
	}
	defer unlock()
	removeStaleParasiteDirs(cwds)
	ro, err := d.cfg.rpcOpts()
	if err != nil {
		return nil, err
	}
	ro.ImagesDirFd = ptr(int32(dir.Fd()))
	if opts.WorkDir != "" {
		wd, err := openDir(opts.WorkDir)
		if err != nil {
			return nil, fmt.Errorf("criu %s pid %d: work dir: %w", op, opts.Pid, err)
		}
		defer wd.Close()
		ro.WorkDirFd = ptr(int32(wd.Fd()))
	}
	ro.Pid = ptr(int32(opts.Pid))
	ro.LogFile = ptr(logName)
	ro.External = opts.External
	if opts.FreezeCgroup != "" {
		ro.FreezeCgroup = ptr(opts.FreezeCgroup)
	}
	if pre || parent != "" || c != nil {
		// Soft-dirty tracking: the pages a later dump needs are those
		// written since this one.
		ro.TrackMem = ptr(true)
	}
	if parent != "" {
		ro.ParentImg = ptr(parent)
	}
	if !pre {
		ro.LeaveRunning = ptr(opts.LeaveRunning)
	}
	_ = os.Remove(logPath) // a stale log would mix old errors into ours

	if c == nil {
		c = d.newCriu()
	}
	start := time.Now()
	n := newNotifier(ctx, opts.Hooks, start)
	if pre {
		err = c.PreDump(ro, n)
	} else {
		err = c.Dump(ro, n)
	}
	wall := time.Since(start)
	events, _, hookErr := n.result()
	res := &DumpResult{
		Pid: opts.Pid, ImagesDir: opts.ImagesDir, Log: logPath,
		Events: events, Started: start, Wall: wall,
	}
	if err != nil || hookErr != nil {
		return res, newError(op, opErr, opts.Pid, opts.ImagesDir, logPath, err, hookErr)
	}
	if res.Stats, err = readDumpStats(workDir); err != nil {
		return res, fmt.Errorf("criu %s pid %d succeeded, but: %w", op, opts.Pid, err)
	}
	return res, nil
}

// relativeParent expresses parent relative to images, as CRIU's
// --prev-images-dir wants it.
func relativeParent(images, parent string) (string, error) {
	if !filepath.IsAbs(parent) {
		return parent, nil
	}
	absImages, err := filepath.Abs(images)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(absImages, parent)
	if err != nil {
		return "", fmt.Errorf("parent images %s: %w", parent, err)
	}
	return rel, nil
}

// Incremental is a series of pre-dumps of one tree ending in a dump, all
// through one CRIU service process: CRIU's service accepts further
// pre-dumps and the final dump only on the connection of the first
// pre-dump. It needs soft-dirty tracking (FeatureMemDirtyTrack).
//
// Use: StartIncremental, PreDump (one or more, each with ParentDir set to
// the previous one's images from the second on), Dump, Close. An
// Incremental is not safe for concurrent use. After a failed call the
// service is gone: Close it and start over.
type Incremental struct {
	d      *Driver
	c      *gocriu.Criu
	pid    int
	done   bool
	dumped bool // the final dump succeeded
}

// StartIncremental starts the CRIU service for a series of pre-dumps of the
// tree rooted at pid. It fails with ErrUnsupported, before starting
// anything, where soft-dirty tracking is missing.
func (d *Driver) StartIncremental(ctx context.Context, pid int) (*Incremental, error) {
	if err := d.require(ctx, FeatureMemDirtyTrack, "pre-dump"); err != nil {
		return nil, err
	}
	c := d.newCriu()
	if err := c.Prepare(); err != nil {
		return nil, fmt.Errorf("start criu service: %w", err)
	}
	return &Incremental{d: d, c: c, pid: pid}, nil
}

// PreDump copies the tree's memory into opts.ImagesDir while the tree keeps
// running (it is stopped only to collect pages). opts.Pid defaults to the
// session's tree; LeaveRunning is ignored.
func (s *Incremental) PreDump(ctx context.Context, opts DumpOptions) (*DumpResult, error) {
	if s.done {
		return nil, errors.New("criu pre-dump: session finished")
	}
	if opts.Pid == 0 {
		opts.Pid = s.pid
	}
	r, err := s.d.dump(ctx, s.c, opts, true)
	if err != nil {
		s.done = true
	}
	return r, err
}

// Dump writes the final images (opts.ParentDir: the last pre-dump) and ends
// the session.
func (s *Incremental) Dump(ctx context.Context, opts DumpOptions) (*DumpResult, error) {
	if s.done {
		return nil, errors.New("criu dump: session finished")
	}
	if opts.Pid == 0 {
		opts.Pid = s.pid
	}
	s.done = true
	r, err := s.d.dump(ctx, s.c, opts, false)
	s.dumped = err == nil
	return r, err
}

// Close stops the CRIU service. After a successful final Dump it reports
// the service's exit status; closing a session without one is an abort,
// and the service's complaint about it is not an error. Close is safe to
// call more than once.
func (s *Incremental) Close() error {
	s.done = true
	if s.c == nil {
		return nil
	}
	err := s.c.Cleanup()
	s.c = nil
	var ee *exec.ExitError
	if err != nil && !s.dumped && errors.As(err, &ee) {
		return nil
	}
	return err
}
