package criu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDirLocksExclusivePerDir(t *testing.T) {
	var l dirLocks
	ctx := context.Background()
	var inA atomic.Int32
	var maxA atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dirs := []string{"/a", "/b" + string(rune('0'+i))}
			if i%2 == 1 {
				dirs = []string{"/c" + string(rune('0'+i)), "/a"} // other order
			}
			unlock, err := l.lock(ctx, dirs)
			if err != nil {
				t.Error(err)
				return
			}
			n := inA.Add(1)
			for {
				m := maxA.Load()
				if n <= m || maxA.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			inA.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if maxA.Load() != 1 {
		t.Fatalf("%d holders of /a at once", maxA.Load())
	}
	if len(l.m) != 0 {
		t.Fatalf("locks not released: %v", l.m)
	}
}

func TestDirLocksIndependentDirsAndCancel(t *testing.T) {
	var l dirLocks
	ctx := context.Background()
	unlockA, err := l.lock(ctx, []string{"/a", "/a"}) // duplicates are fine
	if err != nil {
		t.Fatal(err)
	}
	// Another directory is not blocked.
	unlockB, err := l.lock(ctx, []string{"/b"})
	if err != nil {
		t.Fatal(err)
	}
	unlockB()
	// /a is: a waiter gives up with its context, holding nothing.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := l.lock(cctx, []string{"/b", "/a"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if _, held := l.m["/b"]; held {
		t.Fatal("/b still referenced after the cancelled lock")
	}
	unlockA()
	if len(l.m) != 0 {
		t.Fatalf("locks not released: %v", l.m)
	}
}

// TestDirLocksAcrossProcesses: a directory locked by one dirLocks (one
// daemon) is locked for another (a second daemon on the same host) and for
// any other process, until released.
func TestDirLocksAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	var a, b dirLocks
	unlockA, err := a.lock(context.Background(), []string{dir})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := b.lock(cctx, []string{dir}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second dirLocks: %v, want DeadlineExceeded while the first holds %s", err, dir)
	}
	if _, err := exec.LookPath("flock"); err == nil {
		if err := exec.Command("flock", "-n", dir, "true").Run(); err == nil {
			t.Fatalf("flock(1) took %s while it was held", dir)
		}
	}
	unlockA()
	unlockB, err := b.lock(context.Background(), []string{dir})
	if err != nil {
		t.Fatal(err)
	}
	unlockB()
	if len(a.m) != 0 || len(b.m) != 0 {
		t.Fatalf("locks not released: %v %v", a.m, b.m)
	}
}

func TestTreeCwds(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("sleep", "30")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	self, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := treeCwds(os.Getpid())
	if !slices.Contains(got, self) || !slices.Contains(got, resolved) {
		t.Fatalf("treeCwds = %v, want %s and %s", got, self, resolved)
	}
	if got := treeCwds(1 << 22); len(got) != 0 {
		t.Fatalf("treeCwds of a missing pid = %v", got)
	}
}

func TestRemoveStaleParasiteDirs(t *testing.T) {
	empty, full, file := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(empty, parasiteProcDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(full, parasiteProcDir, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(file, parasiteProcDir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	removeStaleParasiteDirs([]string{empty, full, file, filepath.Join(empty, "missing")})
	if _, err := os.Lstat(filepath.Join(empty, parasiteProcDir)); !os.IsNotExist(err) {
		t.Fatal("empty stale directory kept")
	}
	for _, d := range []string{full, file} {
		if _, err := os.Lstat(filepath.Join(d, parasiteProcDir)); err != nil {
			t.Fatalf("%s: removed something that is not an empty directory", d)
		}
	}
}
