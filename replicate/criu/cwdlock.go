package criu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// parasiteProcDir is the directory CRIU's parasite creates in the working
// directory of every task it dumps when the task's /proc is not of its own
// PID namespace (trees started by replicate/shim): it mounts a private
// proc there for a moment, then removes it. Two dumps of tasks with the
// same working directory at once collide on it ("Can't create a directory
// (-17)").
const parasiteProcDir = "proc.crtools"

// dirLocks serialises dumps per working directory: within this process
// with a semaphore per directory, and across processes (several daemons
// on one host, as tests run them, or any other user of this package) with
// flock(2) on the directory itself, which the kernel drops if the holder
// dies. The zero value is ready to use and safe for concurrent use.
type dirLocks struct {
	mu sync.Mutex
	m  map[string]*dirLock
}

type dirLock struct {
	sem  chan struct{} // capacity 1: held while full
	refs int
	fd   int // the directory, flocked, while held (-1: could not open it)
}

// flockPoll is how often a dump waiting for another process's dump in the
// same directory tries again.
const flockPoll = 5 * time.Millisecond

// lock takes the locks of dirs in a fixed order (so that two callers never
// wait on each other crosswise) and returns the function releasing them.
// It gives up when ctx is done.
func (l *dirLocks) lock(ctx context.Context, dirs []string) (unlock func(), err error) {
	dirs = slices.Clone(dirs)
	slices.Sort(dirs)
	dirs = slices.Compact(dirs)
	var held []string
	release := func() {
		for _, d := range held {
			l.put(d)
		}
	}
	for _, d := range dirs {
		dl := l.get(d)
		select {
		case dl.sem <- struct{}{}:
		case <-ctx.Done():
			l.unref(d)
			release()
			return nil, ctx.Err()
		}
		fd, err := flockDir(ctx, d)
		if err != nil {
			<-dl.sem
			l.unref(d)
			release()
			return nil, err
		}
		dl.fd = fd
		held = append(held, d)
	}
	return release, nil
}

// flockDir takes an exclusive flock on directory d, waiting for another
// holder until ctx is done. It returns the descriptor holding it, or -1
// when d cannot be opened (a dump then finds out by itself).
func flockDir(ctx context.Context, d string) (int, error) {
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, nil
	}
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			unix.Close(fd)
			return -1, nil // no flock here: the semaphore alone serialises
		}
		select {
		case <-ctx.Done():
			unix.Close(fd)
			return -1, ctx.Err()
		case <-time.After(flockPoll):
		}
	}
}

func (l *dirLocks) get(d string) *dirLock {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string]*dirLock)
	}
	dl := l.m[d]
	if dl == nil {
		dl = &dirLock{sem: make(chan struct{}, 1), fd: -1}
		l.m[d] = dl
	}
	dl.refs++
	return dl
}

// put releases a held lock and drops the caller's reference.
func (l *dirLocks) put(d string) {
	l.mu.Lock()
	dl := l.m[d]
	l.mu.Unlock()
	if dl.fd >= 0 {
		unix.Close(dl.fd) // drops the flock
	}
	dl.fd = -1
	<-dl.sem
	l.unref(d)
}

func (l *dirLocks) unref(d string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dl := l.m[d]
	if dl.refs--; dl.refs == 0 {
		delete(l.m, d)
	}
}

// treeCwds returns the working directories of the processes of the tree
// rooted at root, as the caller's mount namespace names them. Processes
// that vanish meanwhile are skipped.
func treeCwds(root int) []string {
	var out []string
	seen := map[int]bool{}
	todo := []int{root}
	for len(todo) > 0 {
		pid := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		base := "/proc/" + strconv.Itoa(pid)
		if cwd, err := os.Readlink(base + "/cwd"); err == nil && !strings.HasSuffix(cwd, " (deleted)") {
			out = append(out, cwd)
		}
		tasks, _ := os.ReadDir(base + "/task")
		for _, t := range tasks {
			b, err := os.ReadFile(base + "/task/" + t.Name() + "/children")
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					todo = append(todo, c)
				}
			}
		}
	}
	return out
}

// removeStaleParasiteDirs removes empty proc.crtools directories left in
// dirs by a CRIU that died mid-dump; they would fail every later dump. The
// caller holds the locks of dirs, so no dump of this driver is using them.
// A directory that is not empty, or still a mount point, is left alone.
func removeStaleParasiteDirs(dirs []string) {
	for _, d := range dirs {
		p := filepath.Join(d, parasiteProcDir)
		if st, err := os.Lstat(p); err == nil && st.IsDir() {
			_ = unix.Rmdir(p)
		}
	}
}
