package criu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	gocriu "github.com/checkpoint-restore/go-criu/v8"
	"golang.org/x/sys/unix"
)

// Features the driver checks before use.
const (
	// FeatureMemDirtyTrack is soft-dirty memory tracking, needed by
	// pre-dumps and by dumps against parent images.
	FeatureMemDirtyTrack = "mem_dirty_track"
)

// Log file names CRIU writes in the work directory (the images directory
// unless a work directory is given).
const (
	DumpLog    = "dump.log"
	PreDumpLog = "pre-dump.log"
	RestoreLog = "restore.log"
)

// Driver runs CRIU over its RPC (swrk) protocol through go-criu. Each call
// starts its own CRIU service process, so a Driver is safe for concurrent
// use on different trees; it caches feature probes. Dumps of trees whose
// processes share a working directory are serialised: CRIU briefly mounts a
// private /proc in the working directory of each task it dumps, so that
// directory must be writable by root, and two dumps there at once collide.
// Use one Driver per node.
type Driver struct {
	cfg   Config
	path  string
	probe Probe
	// dirs serialises dumps of trees sharing a working directory (see
	// parasiteProcDir).
	dirs dirLocks
	// feature answers feature probes; tests replace it.
	feature func(ctx context.Context, name string) (bool, string, error)
}

// New returns a driver for cfg, locating the CRIU binary. It does not run
// CRIU; use Check or Feature for that.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	path, err := Locate(cfg.Path, cfg.Prefix)
	if err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, path: path}
	d.feature = func(ctx context.Context, name string) (bool, string, error) {
		return d.probe.Feature(ctx, d.path, name)
	}
	return d, nil
}

// Path is the CRIU binary the driver runs.
func (d *Driver) Path() string { return d.path }

// Config is the configuration the driver was made with.
func (d *Driver) Config() Config { return d.cfg }

// Feature reports whether CRIU and the kernel support a feature
// (`criu check --feature name`), cached for the driver's lifetime.
func (d *Driver) Feature(ctx context.Context, name string) (ok bool, detail string, err error) {
	return d.feature(ctx, name)
}

// require returns nil when the feature is present, an error matching
// ErrUnsupported when CRIU says it is absent, and the probe's error when
// the probe itself failed. what names the operation that needs it.
func (d *Driver) require(ctx context.Context, name, what string) error {
	ok, detail, err := d.feature(ctx, name)
	return requirement(name, what, ok, detail, err)
}

// requirement is the decision of require, apart from the probe.
func requirement(name, what string, ok bool, detail string, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("%s needs criu feature %s: probe failed: %w", what, name, err)
	case !ok:
		if detail == "" {
			detail = "reported missing"
		}
		return fmt.Errorf("%w: %s needs %s: %s", ErrUnsupported, what, name, detail)
	}
	return nil
}

// newCriu returns a go-criu client for the driver's binary.
func (d *Driver) newCriu() *gocriu.Criu {
	c := gocriu.MakeCriu()
	c.SetCriuPath(d.path)
	return c
}

// openDir opens a directory for CRIU. CRIU reads it as
// /proc/<caller>/fd/<fd>, so the file must stay open for the whole call.
func openDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// processExists reports whether pid names a live process (or zombie).
func processExists(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || err == unix.EPERM
}

// FileKey is CRIU's inherit-fd key for a regular file: its absolute path,
// symlinks resolved as far as the file exists, without the leading slash.
func FileKey(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	} else if r, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(r, filepath.Base(abs))
	}
	return strings.TrimPrefix(abs, "/"), nil
}

// SetChildSubreaper makes the calling process the reaper of orphaned
// descendants (PR_SET_CHILD_SUBREAPER), so that restored trees and their
// orphans are reaped by the daemon rather than by a slow PID 1 whose
// zombies keep their PIDs. The setting is process-wide and inherited by
// no one; call it once at daemon start.
func SetChildSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return nil
}

// IsChildSubreaper reports whether the calling process is a child
// subreaper.
func IsChildSubreaper() (bool, error) {
	var v int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0, 0, 0); err != nil {
		return false, fmt.Errorf("prctl(PR_GET_CHILD_SUBREAPER): %w", err)
	}
	return v != 0, nil
}
