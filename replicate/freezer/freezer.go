// Package freezer holds an application's process tree in a cgroup of its own
// so that doppel can stop every process at once (the PSB phase of a
// checkpoint) and resume them together. It supports the cgroup v1 freezer
// controller and the freezer built into cgroup v2.
package freezer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrUnsupported means neither a cgroup v1 freezer nor cgroup v2 is mounted.
var ErrUnsupported = errors.New("no cgroup freezer on this host")

// Config says where cgroups are mounted and how doppel names its own.
type Config struct {
	// Root is the cgroup mount point.
	Root string
	// Parent is the cgroup (relative to the freezer hierarchy) under which
	// each app gets one of its own.
	Parent string
	// Poll is how often the freezer state is read while waiting.
	Poll time.Duration
}

// DefaultConfig puts apps under /sys/fs/cgroup/.../doppel/<app>.
func DefaultConfig() Config {
	return Config{Root: "/sys/fs/cgroup", Parent: "doppel", Poll: time.Millisecond}
}

// Cgroup is one app's freezer cgroup. Its methods are not safe for
// concurrent use on the same app; doppel serialises checkpoints per app.
type Cgroup struct {
	// Path is the cgroup directory, as CRIU's --freeze-cgroup takes it.
	Path string
	v2   bool
	poll time.Duration
}

// Open creates (if needed) and returns the freezer cgroup for app.
func Open(cfg Config, app string) (*Cgroup, error) {
	if app == "" || strings.ContainsAny(app, "/\x00") || app == "." || app == ".." {
		return nil, fmt.Errorf("freezer: bad app name %q", app)
	}
	base, v2, err := hierarchy(cfg.Root)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(base, cfg.Parent, app)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return nil, fmt.Errorf("freezer: create %s: %w", p, err)
	}
	poll := cfg.Poll
	if poll <= 0 {
		poll = time.Millisecond
	}
	return &Cgroup{Path: p, v2: v2, poll: poll}, nil
}

// Sweep removes the app cgroups under cfg's parent that hold no process,
// then the parent if nothing is left in it. A cgroup with processes (an
// app still running) stays: the kernel refuses to remove it. Open
// creates a removed cgroup again when its app next runs.
func Sweep(cfg Config) error {
	base, _, err := hierarchy(cfg.Root)
	if err != nil {
		return err
	}
	parent := filepath.Join(base, cfg.Parent)
	if filepath.Clean(parent) == filepath.Clean(base) {
		return fmt.Errorf("freezer: sweep of the hierarchy's root %s refused", base)
	}
	entries, err := os.ReadDir(parent)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("freezer: sweep: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		removeEmpty(filepath.Join(parent, e.Name()), time.Second)
	}
	_ = os.Remove(parent) // ENOTEMPTY or EBUSY while anything is left
	return nil
}

// removeEmpty removes the cgroup dir unless a live process is in it: the
// kernel refuses (EBUSY) atomically. A cgroup holding only processes that
// have exited (zombies not yet reaped: an app stopped just before, whose
// init its parent is about to reap) is retried for up to wait.
func removeEmpty(dir string, wait time.Duration) {
	deadline := time.Now().Add(wait)
	for {
		err := os.Remove(dir)
		if err == nil || !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return
		}
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return
		}
		for _, pid := range strings.Fields(string(procs)) {
			if !exited(pid) {
				return // an app still runs in it
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exited says whether process pid is gone or a zombie.
func exited(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
}

// hierarchy finds the freezer: the v1 controller's mount, or the v2 root.
func hierarchy(root string) (string, bool, error) {
	if st, err := os.Stat(filepath.Join(root, "freezer")); err == nil && st.IsDir() {
		if _, err := os.Stat(filepath.Join(root, "freezer", "cgroup.procs")); err == nil {
			return filepath.Join(root, "freezer"), false, nil
		}
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return root, true, nil
	}
	return "", false, fmt.Errorf("%w (looked under %s)", ErrUnsupported, root)
}

// Add moves pid (and the children it forks later) into the cgroup.
func (c *Cgroup) Add(pid int) error {
	f := filepath.Join(c.Path, "cgroup.procs")
	if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("freezer: add pid %d to %s: %w", pid, c.Path, err)
	}
	return nil
}

// Pids lists the processes in the cgroup.
func (c *Cgroup) Pids() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.Path, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("freezer: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// Freeze stops every process of the cgroup and returns once the kernel
// reports them all frozen, or an error (after thawing again) when ctx ends
// first.
//
// A task waiting for its vfork child to exec cannot be frozen for good:
// if the child is frozen first, a cgroup v1 freezer stays FREEZING, and
// cgroup v2 counts the waiter as frozen though CRIU cannot seize it (it
// sleeps uninterruptibly until the child execs). So when a task of the
// tree waits so, Freeze thaws the tree for a moment, long enough for the
// child to exec, and freezes it again, until none does or ctx ends. A
// cgroup that is frozen already when Freeze is called is left as it is.
func (c *Cgroup) Freeze(ctx context.Context) error {
	if frozen, err := c.Frozen(); err != nil {
		return err
	} else if frozen {
		return nil
	}
	backoff := time.Millisecond
	for {
		waiting, err := c.freezeOnce(ctx)
		if err != nil || len(waiting) == 0 {
			return err
		}
		_ = c.Thaw()
		select {
		case <-ctx.Done():
			return fmt.Errorf("freezer: %s did not freeze: %s keeps waiting for a vfork child to exec: %w", c.Path, strings.Join(waiting, ", "), ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 20*time.Millisecond)
	}
}

// vforkCheckAfter is how long a freeze may take before Freeze looks for a
// task in vfork wait that holds it up, and how often it looks again.
const vforkCheckAfter = 2 * time.Millisecond

// freezeOnce asks the kernel to freeze the cgroup and waits until it says
// so, or until a task in vfork wait holds the freeze up (it returns such
// tasks, the cgroup not thawed), or thaws again when ctx ends first.
func (c *Cgroup) freezeOnce(ctx context.Context) ([]string, error) {
	if err := c.set(true); err != nil {
		return nil, err
	}
	// While the freeze lasts, the tasks are looked at every
	// vforkCheckAfter, not at every poll: it reads a file per thread.
	check := time.Now().Add(vforkCheckAfter)
	for {
		frozen, err := c.Frozen()
		if err != nil {
			_ = c.Thaw()
			return nil, err
		}
		if frozen || time.Now().After(check) {
			if w := c.vforkWaiters(); len(w) > 0 || frozen {
				return w, nil
			}
			check = time.Now().Add(vforkCheckAfter)
		}
		// A v1 freezer can stall in FREEZING: writing FROZEN again retries.
		// A v2 freezer converges by itself.
		if !c.v2 {
			if err := c.set(true); err != nil {
				_ = c.Thaw()
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			_ = c.Thaw()
			return nil, fmt.Errorf("freezer: %s did not freeze: %w", c.Path, ctx.Err())
		case <-time.After(c.poll):
		}
	}
}

// vforkWaiters lists the threads of the cgroup that wait for a vfork child
// to exec, as "tid N (comm)": those stopped inside a clone-family system
// call anywhere but in the freezer's own sleep (where a child that has
// just returned from one waits).
func (c *Cgroup) vforkWaiters() []string {
	file := "tasks"
	if c.v2 {
		file = "cgroup.threads"
	}
	b, err := os.ReadFile(filepath.Join(c.Path, file))
	if err != nil {
		return nil
	}
	var out []string
	for _, tid := range strings.Fields(string(b)) {
		sc, err := os.ReadFile("/proc/" + tid + "/syscall")
		if err != nil {
			continue
		}
		nr, _, _ := strings.Cut(string(sc), " ")
		if n, err := strconv.Atoi(nr); err != nil || !isCloneSyscall(n) {
			continue
		}
		if w, _ := os.ReadFile("/proc/" + tid + "/wchan"); string(w) == "__refrigerator" {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + tid + "/comm")
		out = append(out, "tid "+tid+" ("+strings.TrimSpace(string(comm))+")")
	}
	return out
}

// Thaw resumes every process of the cgroup.
func (c *Cgroup) Thaw() error { return c.set(false) }

// Frozen reports whether the whole cgroup is frozen.
func (c *Cgroup) Frozen() (bool, error) {
	if c.v2 {
		b, err := os.ReadFile(filepath.Join(c.Path, "cgroup.events"))
		if err != nil {
			return false, fmt.Errorf("freezer: %w", err)
		}
		return strings.Contains(string(b), "frozen 1"), nil
	}
	b, err := os.ReadFile(filepath.Join(c.Path, "freezer.state"))
	if err != nil {
		return false, fmt.Errorf("freezer: %w", err)
	}
	return strings.TrimSpace(string(b)) == "FROZEN", nil
}

func (c *Cgroup) set(freeze bool) error {
	var file, val string
	switch {
	case c.v2 && freeze:
		file, val = "cgroup.freeze", "1"
	case c.v2:
		file, val = "cgroup.freeze", "0"
	case freeze:
		file, val = "freezer.state", "FROZEN"
	default:
		file, val = "freezer.state", "THAWED"
	}
	if err := os.WriteFile(filepath.Join(c.Path, file), []byte(val), 0); err != nil {
		return fmt.Errorf("freezer: write %s to %s: %w", val, c.Path, err)
	}
	return nil
}

// Remove deletes the cgroup; it must be empty.
func (c *Cgroup) Remove() error {
	_ = c.Thaw()
	if err := os.Remove(c.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("freezer: remove %s: %w", c.Path, err)
	}
	return nil
}
