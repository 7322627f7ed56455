package replicate

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"doppel/introspect"
	"doppel/replicate/store"
)

// TestBadRequests covers the callers' mistakes: unknown and invalid names,
// a checkpoint of a stopped app, a restore of a running one, and an epoch
// captured with another CRIU version.
func TestBadRequests(t *testing.T) {
	requireE2E(t)
	state := t.TempDir()
	e := newEngine(t, state, nil)
	ctx := t.Context()

	if _, err := e.Checkpoint(ctx, "no-such-app", CheckpointOptions{}); !errors.Is(err, ErrNoApp) {
		t.Errorf("checkpoint of an unknown app: %v, want ErrNoApp", err)
	}
	if _, _, err := e.Restore(ctx, "no-such-app", RestoreOptions{}); !errors.Is(err, ErrNoApp) {
		t.Errorf("restore of an unknown app: %v, want ErrNoApp", err)
	}
	if err := e.Stop(ctx, "no-such-app"); !errors.Is(err, ErrNoApp) {
		t.Errorf("stop of an unknown app: %v, want ErrNoApp", err)
	}
	if _, err := os.Stat(filepath.Join(state, "apps", "no-such-app")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("asking about an unknown app created its directory: %v", err)
	}
	if _, err := e.Checkpoint(ctx, "../escape", CheckpointOptions{}); err == nil || !strings.Contains(err.Error(), "bad app name") {
		t.Errorf("checkpoint of %q: %v, want a bad name", "../escape", err)
	}
	if _, err := os.Stat(filepath.Join(state, "escape")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a bad name created a directory outside apps/: %v", err)
	}

	a := startApp(t, e, "bad", appOpts{})
	if _, err := e.Run(ctx, Spec{Name: a.name, Args: []string{testAppPath}}); !errors.Is(err, ErrAppExists) {
		t.Errorf("second run: %v, want ErrAppExists", err)
	}
	ep, err := e.Checkpoint(ctx, a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Restore(ctx, a.name, RestoreOptions{}); !errors.Is(err, ErrRunning) {
		t.Errorf("restore while running: %v, want ErrRunning", err)
	}

	// An epoch that claims another CRIU version: same images, other
	// manifest.
	tx, err := e.Store().Begin(a.name, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	tx.SetImages(ep.Images)
	tx.SetData(ep.Data)
	m := ep.Manifest
	m.CRIUVersion = "3.17"
	if _, err := tx.Commit(m); err != nil {
		tx.Abort()
		t.Fatal(err)
	}

	stopAndWait(t, e, a.name)
	if _, err := e.Checkpoint(ctx, a.name, CheckpointOptions{}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("checkpoint of a stopped app: %v, want ErrNotRunning", err)
	}
	_, _, err = e.Restore(ctx, a.name, RestoreOptions{})
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "3.17") {
		t.Fatalf("restore of an epoch from CRIU 3.17: %v, want ErrMismatch naming the version", err)
	}
	if pids := cgroupPids(t, e, a.name); len(pids) != 0 {
		t.Fatalf("processes %v after a refused restore", pids)
	}
	if _, _, err := e.Restore(ctx, a.name, RestoreOptions{Epoch: 99}); !errors.Is(err, store.ErrNoEpoch) {
		t.Errorf("restore of a missing epoch: %v, want store.ErrNoEpoch", err)
	}
	st, rep, err := e.Restore(ctx, a.name, RestoreOptions{Force: true})
	if err != nil {
		t.Fatalf("forced restore: %v", err)
	}
	if rep.Manifest.Epoch != 2 || !st.Running() {
		t.Fatalf("forced restore: epoch %d running %t", rep.Manifest.Epoch, st.Running())
	}
	if s := dial(t, a.port).state(t); s.nonce != a.nonce {
		t.Fatalf("nonce %s after forced restore, want %s", s.nonce, a.nonce)
	}
	stopAndWait(t, e, a.name)
}

// hostPids returns the app's processes other than its init.
func appProcesses(t testing.TB, a *testApp) []int {
	t.Helper()
	return treePids(a.st.Pid, nil)[1:]
}

// TestBlocker holds a pipe end of the app in the test process, outside the
// tree: the checkpoint must refuse at RM naming the pipe, leave the app
// running, and write no epoch.
func TestBlocker(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), nil)
	a := startApp(t, e, "blocker", appOpts{shm: true, tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	waitCgroupSize(t, e, a.name, 4)
	if _, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	// The main process is the init's only child.
	main := children(a.st.Pid)
	if len(main) != 1 {
		t.Fatalf("init has children %v, want one", main)
	}
	fd, ino := grabPipe(t, main[0])

	rec := &phaseRecorder{}
	before := len(readTicks(t, a.data))
	_, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{Observer: rec.observe})
	var blocked *introspect.BlockedError
	if !errors.Is(err, introspect.ErrBlocked) || !errors.As(err, &blocked) {
		t.Fatalf("checkpoint with a pipe held outside: %v, want introspect.ErrBlocked", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "pipe:["+ino+"]") || !strings.Contains(msg, "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("error %q should name the pipe %s and this process (pid %d)", msg, ino, os.Getpid())
	}
	if got, want := strings.Join(rec.of(2), " "), "PSB /PSB RM /RM!"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if got := epochNumbers(t, e, a.name); len(got) != 1 || got[0] != 1 {
		t.Errorf("epochs %v after a refused checkpoint, want [1]", got)
	}
	if frozen(t, e, a.name) {
		t.Fatal("app left frozen after a refused checkpoint")
	}
	if s := dial(t, a.port).state(t); s.nonce != a.nonce {
		t.Fatalf("nonce %s, want %s", s.nonce, a.nonce)
	}
	waitTicks(t, a.data, before+10)

	unix.Close(fd)
	ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatalf("checkpoint after the pipe was let go: %v", err)
	}
	if ep.Manifest.Epoch != 2 {
		t.Errorf("epoch %d, want 2: a refused checkpoint must not use up a number", ep.Manifest.Epoch)
	}
	stopAndWait(t, e, a.name)
}

// grabPipe duplicates a pipe descriptor of pid into this process
// (pidfd_getfd) and returns it with the pipe's inode.
func grabPipe(t testing.TB, pid int) (int, string) {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	for _, ent := range ents {
		link, _ := os.Readlink(dir + "/" + ent.Name())
		ino, ok := strings.CutPrefix(link, "pipe:[")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(ent.Name())
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd, strings.TrimSuffix(ino, "]")
	}
	t.Fatalf("pid %d has no pipe", pid)
	return -1, ""
}

// checkNoLeftovers checks that a failed checkpoint left no partial epoch:
// nothing but complete epochs in the store, no uncommitted pack, no dump
// directory.
func checkNoLeftovers(t *testing.T, e *testEngine, state, name string, want []uint64) {
	t.Helper()
	if got := epochNumbers(t, e, name); !equalU64(got, want) {
		t.Errorf("epochs %v, want %v", got, want)
	}
	ents, _ := os.ReadDir(filepath.Join(state, "store", "apps", name))
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), ".") {
			t.Errorf("partial epoch %s left in the store", ent.Name())
		}
	}
	packs, _ := filepath.Glob(filepath.Join(state, "store", "packs", "*.tmp"))
	if len(packs) > 0 {
		t.Errorf("uncommitted packs left: %v", packs)
	}
	dumps, _ := filepath.Glob(filepath.Join(e.cfg.WorkDir, "doppel-dump-"+name+"-*"))
	if len(dumps) > 0 {
		t.Errorf("dump directories left: %v", dumps)
	}
	for _, n := range want {
		dir := t.TempDir()
		ep, err := e.Store().Load(name, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Store().Materialise(t.Context(), name, n, filepath.Join(dir, "x")); err != nil {
			t.Fatalf("epoch %d: %v", n, err)
		}
		if err := verifyImages(t.Context(), filepath.Join(dir, "x"), ep.Images); err != nil {
			t.Fatalf("epoch %d: %v", n, err)
		}
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFailureAfterBarrier makes checkpoints fail after the app was frozen:
// once by cancelling the context as the PRM phase starts, once inside CRIU
// (its images directory is on a file system too small for them). Each time
// the app must run again, the previous epoch stay intact and no partial
// epoch remain.
func TestFailureAfterBarrier(t *testing.T) {
	requireE2E(t)
	state := t.TempDir()
	e := newEngine(t, state, nil)
	a := startApp(t, e, "fail", appOpts{bufMB: 8, shm: true, tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	held := dial(t, a.port)
	held.state(t)
	if _, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	resumed := 0
	rec := &phaseRecorder{}
	_, err := e.Checkpoint(ctx, a.name, CheckpointOptions{
		Observer: func(ev Event) {
			rec.observe(ev)
			if ev.Phase == PRM && !ev.End {
				cancel()
			}
		},
		Resume: func() { resumed++ },
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled checkpoint: %v, want context.Canceled", err)
	}
	if got, want := strings.Join(rec.of(2), " "), "PSB /PSB RM /RM SRM /SRM PRM /PRM!"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if resumed != 1 || frozen(t, e, a.name) {
		t.Fatalf("after a cancelled checkpoint: resumed %d times, frozen %t", resumed, frozen(t, e, a.name))
	}
	if s := held.state(t); s.nonce != a.nonce {
		t.Fatal("app does not answer after a cancelled checkpoint")
	}
	checkNoLeftovers(t, e, state, a.name, []uint64{1})
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	// CRIU fails in the middle of the dump: no space for the images.
	tiny := t.TempDir()
	if err := unix.Mount("tmpfs", tiny, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(tiny, unix.MNT_DETACH) })
	small := newEngine(t, state, func(c *Config) { c.WorkDir = tiny })
	before := len(readTicks(t, a.data))
	_, err = small.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err == nil {
		t.Fatal("checkpoint with no room for the images succeeded")
	}
	t.Logf("checkpoint with no room for the images: %v", err)
	if kept := filepath.Join(state, "apps", a.name, "dump-failed.log"); !strings.Contains(err.Error(), kept) {
		t.Errorf("error does not point at the kept CRIU log %s", kept)
	} else if b, _ := os.ReadFile(kept); !strings.Contains(string(b), "No space left") {
		t.Errorf("kept CRIU log %s does not say why the dump failed", kept)
	}
	if frozen(t, e, a.name) {
		t.Fatal("app left frozen after a failed dump")
	}
	if s := held.state(t); s.nonce != a.nonce || !s.shmOK {
		t.Fatalf("state %+v after a failed dump", s)
	}
	waitTicks(t, a.data, before+10)
	checkNoLeftovers(t, small, state, a.name, []uint64{1})
	if err := small.Close(); err != nil {
		t.Fatal(err)
	}

	// Back on a normal engine the numbering continues, and the epoch
	// written after the failures restores.
	e = newEngine(t, state, nil)
	ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Epoch != 2 {
		t.Errorf("epoch %d after two failed checkpoints, want 2", ep.Manifest.Epoch)
	}
	stopAndWait(t, e, a.name)
	if _, _, err := e.Restore(t.Context(), a.name, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := held.state(t); s.nonce != a.nonce || !s.shmOK {
		t.Fatalf("state %+v after restore", s)
	}
	stopAndWait(t, e, a.name)
}

// TestAppKilledDuringCheckpoint kills the app while it is frozen for a
// checkpoint: the checkpoint must end (with an epoch of the state at the
// barrier, or with an error), leave nothing frozen or partial, and the app
// must be restorable.
func TestAppKilledDuringCheckpoint(t *testing.T) {
	requireE2E(t)
	state := t.TempDir()
	e := newEngine(t, state, nil)
	a := startApp(t, e, "killed", appOpts{shm: true, tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	waitCgroupSize(t, e, a.name, 4)
	if _, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	procs := treePids(a.st.Pid, nil)
	done := make(chan error, 1)
	go func() {
		_, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{
			Observer: func(ev Event) {
				if ev.Phase == SRM && !ev.End {
					for _, p := range procs {
						_ = unix.Kill(p, unix.SIGKILL)
					}
				}
			},
		})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("checkpoint of an app killed while frozen did not return")
	}
	t.Logf("checkpoint of an app killed while frozen: %v", err)
	want := []uint64{1}
	if err == nil {
		want = []uint64{1, 2}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := e.App(a.name)
		if !st.Running() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("app still runs after SIGKILL")
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitCgroupSize(t, e, a.name, 0)
	if frozen(t, e, a.name) {
		t.Error("cgroup left frozen")
	}
	checkNoLeftovers(t, e, state, a.name, want)
	if _, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("checkpoint of the dead app: %v, want ErrNotRunning", err)
	}
	if _, _, err := e.Restore(t.Context(), a.name, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := dial(t, a.port).state(t); s.nonce != a.nonce {
		t.Fatalf("nonce %s after restore, want %s", s.nonce, a.nonce)
	}
	stopAndWait(t, e, a.name)
}

// TestCheckpointerDies kills the process running a checkpoint while the
// app is frozen: the next engine opened on the state directory thaws the
// app, and the store holds no partial epoch.
func TestCheckpointerDies(t *testing.T) {
	requireE2E(t)
	state := t.TempDir()
	e := newEngine(t, state, nil)
	a := startApp(t, e, "orphan", appOpts{tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	if _, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"=checkpoint-and-die", "DOPPEL_TEST_STATE="+state, "DOPPEL_TEST_APP="+a.name)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ProcessState.Sys().(interface{ Signaled() bool }).Signaled() == false {
		t.Fatalf("checkpointing process: %v, want killed by a signal; output:\n%s", err, out)
	}
	if !frozen(t, e, a.name) {
		t.Fatal("app not frozen after its checkpointer died mid-checkpoint (the test did not test anything)")
	}
	before := len(readTicks(t, a.data))

	e = newEngine(t, state, nil)
	if frozen(t, e, a.name) {
		t.Fatal("opening an engine did not thaw the app left frozen")
	}
	waitTicks(t, a.data, before+10)
	if !strings.Contains(e.logs.String(), "interrupted checkpoint") {
		t.Errorf("no warning about the thawed app in the log:\n%s", e.logs)
	}
	checkNoLeftovers(t, e, state, a.name, []uint64{1})
	ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Epoch != 2 {
		t.Errorf("epoch %d, want 2", ep.Manifest.Epoch)
	}
	stopAndWait(t, e, a.name)
}

// TestEpochNumbers checks that epoch numbers are never reused, even when
// GC has removed the epochs that had them or the app's epochs were wiped
// from the store.
func TestEpochNumbers(t *testing.T) {
	requireE2E(t)
	state := t.TempDir()
	e := newEngine(t, state, func(c *Config) { c.Store.Retention = 1 })
	a := startApp(t, e, "numbers", appOpts{})
	for i := 1; i <= 3; i++ {
		ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ep.Manifest.Epoch != uint64(i) {
			t.Fatalf("checkpoint %d numbered %d", i, ep.Manifest.Epoch)
		}
	}
	if got := epochNumbers(t, e, a.name); !equalU64(got, []uint64{3}) {
		t.Fatalf("epochs %v with retention 1, want [3]", got)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(state, "store", "apps", a.name)); err != nil {
		t.Fatal(err)
	}
	e = newEngine(t, state, func(c *Config) { c.Store.Retention = 1 })
	ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Epoch != 4 || ep.Manifest.Parent != 0 {
		t.Fatalf("after the store lost the app's epochs: epoch %d parent %d, want 4 and no parent", ep.Manifest.Epoch, ep.Manifest.Parent)
	}
	stopAndWait(t, e, a.name)
	// A new run of the app keeps counting.
	st, err := e.Run(t.Context(), a.st.Spec)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, st)
	ep, err = e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Epoch != 5 {
		t.Fatalf("first epoch of a new run: %d, want 5", ep.Manifest.Epoch)
	}
	stopAndWait(t, e, a.name)
}

// TestFencedAppStaysFrozen checks that an app frozen on purpose (Freeze,
// as fencing does) is thawed neither by a new engine nor by a checkpoint,
// which captures it as it is.
func TestFencedAppStaysFrozen(t *testing.T) {
	requireE2E(t)
	state := t.TempDir()
	e := newEngine(t, state, nil)
	a := startApp(t, e, "fenced", appOpts{tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	waitTicks(t, a.data, 5)
	if err := e.Freeze(t.Context(), a.name); err != nil {
		t.Fatal(err)
	}
	n := len(readTicks(t, a.data))
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = newEngine(t, state, nil)
	if !frozen(t, e, a.name) {
		t.Fatal("opening an engine thawed a fenced app")
	}
	resumed := 0
	ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{Resume: func() { resumed++ }})
	if err != nil {
		t.Fatalf("checkpoint of a fenced app: %v", err)
	}
	if !frozen(t, e, a.name) || resumed != 1 {
		t.Fatalf("after checkpointing a fenced app: frozen %t, Resume called %d times; want frozen, 1", frozen(t, e, a.name), resumed)
	}
	if got := len(readTicks(t, a.data)); got != n {
		t.Fatalf("a fenced app wrote %d lines", got-n)
	}
	if ep.Manifest.Epoch != 1 {
		t.Errorf("epoch %d, want 1", ep.Manifest.Epoch)
	}
	if err := e.Thaw(a.name); err != nil {
		t.Fatal(err)
	}
	waitTicks(t, a.data, n+10)
	stopAndWait(t, e, a.name)
	// The epoch taken while fenced restores.
	if _, _, err := e.Restore(t.Context(), a.name, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	checkTicks(t, a, waitTicks(t, a.data, n+10))
	stopAndWait(t, e, a.name)
}

// TestFreezeWaitsForCheckpoint fences an app while a checkpoint of it is
// under way: Freeze waits for the checkpoint to end (a freeze in the middle
// of CRIU's dump would stop the processes where CRIU waits for them, and
// hang the dump), then freezes the app; Thaw waits the same way.
func TestFreezeWaitsForCheckpoint(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), nil)
	a := startApp(t, e, "fencemid", appOpts{tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	waitTicks(t, a.data, 5)
	waitsForCheckpoint(t, e, a.name, "Freeze", func() error { return e.Freeze(t.Context(), a.name) })
	if !frozen(t, e, a.name) {
		t.Fatal("the app runs after Freeze")
	}
	// Unfencing while a checkpoint of the frozen app is under way: the
	// thaw waits too, else the checkpoint, which keeps an app that was
	// frozen when it started frozen, would undo it.
	waitsForCheckpoint(t, e, a.name, "Thaw", func() error { return e.Thaw(a.name) })
	if frozen(t, e, a.name) {
		t.Fatal("the app stays frozen after Thaw")
	}
	stopAndWait(t, e, a.name)
}

// waitsForCheckpoint holds a checkpoint of app at the end of its barrier,
// calls op (named what), checks that op does not return while the
// checkpoint is held, then lets the checkpoint end and checks that op then
// returns without error.
func waitsForCheckpoint(t *testing.T, e *testEngine, app, what string, op func() error) {
	t.Helper()
	inPSB, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		_, err := e.Checkpoint(t.Context(), app, CheckpointOptions{Observer: func(ev Event) {
			if ev.Phase == PSB && ev.End {
				once.Do(func() { close(inPSB); <-release })
			}
		}})
		done <- err
	}()
	select {
	case <-inPSB:
	case err := <-done:
		t.Fatalf("checkpoint ended before its barrier: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no barrier in 30s")
	}
	returned := make(chan error, 1)
	go func() { returned <- op() }()
	select {
	case err := <-returned:
		close(release)
		t.Fatalf("%s returned (%v) while a checkpoint held the app", what, err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	select {
	case err := <-returned:
		if err != nil {
			t.Fatalf("%s after the checkpoint: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still waits 30s after the checkpoint ended", what)
	}
}
