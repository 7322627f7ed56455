package criu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"doppel/replicate/shim"
)

// TestDumpRestoreTree dumps a running tree (init, parent, child; pipes; a
// listener; an established connection inside the tree and one to a peer
// outside it), kills it, restores it, and checks that its state came back.
// The original init is left a zombie across the restore, so the restore
// also proves that a fresh PID namespace makes the old host PIDs
// irrelevant.
func TestDumpRestoreTree(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	tr := startTree(t, "tree-parent", treeOpts{})
	ready := waitLine(t, tr.outPath, "ready ", 20*time.Second)
	port, err := strconv.Atoi(strings.TrimPrefix(ready, "ready "))
	if err != nil {
		t.Fatalf("bad ready line %q", ready)
	}

	// The peer outside the tree: this test's own connection.
	cl := dial(t, port)
	nonce, c1 := cl.count(t)
	for c1 < 200 { // let the counter run
		time.Sleep(20 * time.Millisecond)
		_, c1 = cl.count(t)
	}
	pipeBefore := cl.ask(t, "pipe 1")
	innerBefore := cl.ask(t, "inner a")
	pidsBefore := cl.ask(t, "pids")
	if !strings.HasPrefix(pipeBefore, "pipe pong 1 ") || !strings.HasPrefix(innerBefore, "inner reply a ") {
		t.Fatalf("tree not healthy before dump: %q %q", pipeBefore, innerBefore)
	}
	origPid := tr.p.Pid
	origNS := nsPids(t, origPid)
	_, c1 = cl.count(t)

	// Dump and kill.
	var preDumpAt time.Time
	images := imagesDir(t, "images")
	dr, err := d.Dump(ctx, DumpOptions{
		Pid:       origPid,
		ImagesDir: images,
		Hooks: Hooks{
			PreDump: func() error { preDumpAt = time.Now(); return nil },
		},
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	logDump(t, dr)
	if preDumpAt.IsZero() || dr.Stats.FrozenTime <= 0 || dr.Stats.PagesWritten == 0 || dr.Barrier() <= dr.Setup() {
		t.Fatalf("implausible dump result: pre-dump hook %v, %+v, barrier %v", preDumpAt, dr.Stats, dr.Barrier())
	}
	if _, ok := dr.Events.At(EventPostDump); !ok {
		t.Fatalf("no post-dump notification: %+v", dr.Events)
	}
	// CRIU killed the tree; its init stays a zombie (this test is its
	// parent and does not reap it yet), holding its host PID.
	waitState(t, origPid, "Z", 10*time.Second)

	// While the tree is gone, a request from the outside peer must meet
	// silence, not a reset: the nftables lock drops its packets. TCP
	// retransmits it, and the restored tree answers it.
	cl.send(t, "count")
	if l, err := cl.recv(t, 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("peer saw %q, %v while the tree was down; want silence", l, err)
	}
	// Logs grow after the epoch; the restore must not mind.
	appendLine(t, tr.outPath, "written after the dump")
	appendLine(t, tr.errPath, "written after the dump")

	rr, err := restore(t, d, RestoreOptions{
		ImagesDir:   images,
		AppendFiles: []string{tr.outPath, tr.errPath},
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	logRestore(t, rr)
	if rr.Pid == origPid {
		t.Fatalf("restored root got host pid %d, the original's (still a zombie)", rr.Pid)
	}
	if procState(origPid) != "Z" {
		t.Fatalf("original init %d is %q, want still a zombie", origPid, procState(origPid))
	}
	newNS := nsPids(t, rr.Pid)
	if len(newNS) != 2 || newNS[1] != "1" || len(origNS) != 2 || origNS[1] != "1" {
		t.Fatalf("NSpid of original %v, restored %v: want each the init (1) of its own namespace", origNS, newNS)
	}
	if _, err := tr.p.Wait(); err != nil { // reap the original now
		t.Fatal(err)
	}

	// The request sent during the outage is answered by the restored tree,
	// on the same connection, with the same memory: same nonce, and the
	// counter continues from where it stood (not from 0).
	l, err := cl.recv(t, 20*time.Second)
	if err != nil {
		t.Fatalf("no answer after restore to the request sent while down: %v", err)
	}
	n2, c2 := parseCount(t, l)
	if n2 != nonce || c2 < c1 {
		t.Fatalf("after restore count %s %d; before dump %s %d", n2, c2, nonce, c1)
	}
	_, c3 := cl.count(t)
	if c3 < c2 {
		t.Fatalf("counter went back: %d then %d", c2, c3)
	}
	// The child is still there, connected by the pipes and by the inner
	// TCP connection, with the same PIDs inside the namespace.
	if got := cl.ask(t, "pipe 1"); got != pipeBefore {
		t.Fatalf("pipe after restore %q, before %q", got, pipeBefore)
	}
	if got := cl.ask(t, "inner a"); got != innerBefore {
		t.Fatalf("inner connection after restore %q, before %q", got, innerBefore)
	}
	if got := cl.ask(t, "pids"); got != pidsBefore {
		t.Fatalf("pids after restore %q, before %q", got, pidsBefore)
	}
	// The listener was restored too.
	if n, _ := dial(t, port).count(t); n != nonce {
		t.Fatalf("new connection reaches nonce %s, want %s", n, nonce)
	}
	// The log continued after the line appended while the tree was down.
	b, _ := os.ReadFile(tr.outPath)
	out := string(b)
	i := strings.Index(out, "written after the dump")
	if i < 0 || !strings.Contains(out[i:], `request "pids"`) {
		t.Fatalf("stdout log did not continue after the dump:\n%s", out)
	}

	// The restored init still does its job: SIGTERM from outside reaches
	// the app (which has no handler and dies of it), and the init exits
	// with the app's status.
	p, err := shim.Attach(rr.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() {
		st, err := p.Wait()
		if err != nil {
			done <- -1
			return
		}
		done <- st.ExitCode()
	}()
	select {
	case code := <-done:
		if code != 128+int(syscall.SIGTERM) {
			t.Fatalf("restored init exited %d, want %d", code, 128+int(syscall.SIGTERM))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("restored tree ignored SIGTERM")
	}
}

// TestRestoreBesideOriginal restores a copy of a running tree on the same
// host while the original keeps running: the copy gets a fresh PID
// namespace, so the PIDs recorded in the images (taken by the original in
// its namespace) are free again, and the copy continues from the dumped
// state.
func TestRestoreBesideOriginal(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	tr := startTree(t, "ticker", treeOpts{})
	first := waitLine(t, tr.outPath, "tick ", 20*time.Second)
	nonce := strings.Fields(first)[1]
	waitLine(t, tr.outPath, fmt.Sprintf("tick %s 10", nonce), 20*time.Second)

	images := imagesDir(t, "images")
	dr, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: images, LeaveRunning: true})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	logDump(t, dr)
	if !alive(tr.p.Pid) {
		t.Fatal("original not running after a leave-running dump")
	}
	rr, err := restore(t, d, RestoreOptions{ImagesDir: images, AppendFiles: []string{tr.outPath, tr.errPath}})
	if err != nil {
		t.Fatalf("restore beside the original: %v", err)
	}
	logRestore(t, rr)
	if !alive(tr.p.Pid) || !alive(rr.Pid) {
		t.Fatalf("original %d alive %v, copy %d alive %v", tr.p.Pid, alive(tr.p.Pid), rr.Pid, alive(rr.Pid))
	}
	orig, cp := nsPids(t, tr.p.Pid), nsPids(t, rr.Pid)
	if orig[0] == cp[0] || orig[len(orig)-1] != cp[len(cp)-1] {
		t.Fatalf("NSpid original %v, copy %v: want different host PIDs, same namespace PID", orig, cp)
	}
	// Both copies tick on from the same state into the same log: some
	// tick numbers appear twice with the same nonce.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(tr.outPath)
		seen := map[string]int{}
		dup := ""
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "tick "+nonce+" ") {
				if seen[l]++; seen[l] == 2 {
					dup = l
				}
			}
		}
		if dup != "" {
			t.Logf("both copies wrote %q", dup)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy did not continue from the dumped state; log:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRestoreLogs covers the rule that a log growing after the epoch never
// breaks a restore. CRIU itself skips the size check for files opened
// O_APPEND (how doppel opens logs), but refuses a grown log opened
// otherwise and a log missing on the restoring node; RestoreOptions.
// AppendFiles hands the logs over by inherit-fd and covers both.
func TestRestoreLogs(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	dumpKilled := func(t *testing.T, o treeOpts) (*tree, string) {
		tr := startTree(t, "ticker", o)
		waitLine(t, tr.outPath, "tick ", 20*time.Second)
		images := imagesDir(t, "images")
		if _, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: images}); err != nil {
			t.Fatalf("dump: %v", err)
		}
		if _, err := tr.p.Wait(); err != nil {
			t.Fatal(err)
		}
		return tr, images
	}
	// ticksAfter waits for the restored tree to write a tick past offset.
	ticksAfter := func(t *testing.T, tr *tree, offset int) {
		waitFor(t, 10*time.Second, func() bool {
			b, _ := os.ReadFile(tr.outPath)
			return len(b) > offset && strings.Contains(string(b[offset:]), "tick ")
		})
	}
	size := func(p string) int {
		st, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return int(st.Size())
	}
	restoreTicking := func(t *testing.T, tr *tree, images string) {
		offset := size(tr.outPath)
		if _, err := restore(t, d, RestoreOptions{ImagesDir: images, AppendFiles: []string{tr.outPath, tr.errPath}}); err != nil {
			t.Fatalf("restore with the logs inherited: %v", err)
		}
		ticksAfter(t, tr, offset)
	}

	t.Run("append log grew", func(t *testing.T) {
		tr, images := dumpKilled(t, treeOpts{})
		appendLine(t, tr.outPath, "written after the dump")
		offset := size(tr.outPath)
		if _, err := restore(t, d, RestoreOptions{ImagesDir: images}); err != nil {
			t.Fatalf("restore with a grown O_APPEND log: %v", err)
		}
		ticksAfter(t, tr, offset)
	})

	t.Run("truncating log grew", func(t *testing.T) {
		tr, images := dumpKilled(t, treeOpts{truncLogs: true})
		appendLine(t, tr.outPath, "written after the dump")
		_, err := restore(t, d, RestoreOptions{ImagesDir: images})
		var ce *Error
		if !errors.As(err, &ce) || !errors.Is(err, ErrRestore) || !errors.Is(err, ErrFileChanged) {
			t.Fatalf("restore with a grown log: %v; want *Error matching ErrRestore and ErrFileChanged", err)
		}
		if !strings.Contains(strings.Join(ce.Lines, "\n"), "has bad size") || ce.Log == "" {
			t.Fatalf("error lacks CRIU's log lines: %+v", ce)
		}
		t.Logf("expected failure: %v", err)
		restoreTicking(t, tr, images)
	})

	t.Run("log missing on this node", func(t *testing.T) {
		tr, images := dumpKilled(t, treeOpts{})
		if err := os.Remove(tr.outPath); err != nil {
			t.Fatal(err)
		}
		_, err := restore(t, d, RestoreOptions{ImagesDir: images})
		if !errors.Is(err, ErrRestore) || !errors.Is(err, ErrFileChanged) {
			t.Fatalf("restore without its log: %v; want ErrRestore and ErrFileChanged", err)
		}
		t.Logf("expected failure: %v", err)
		restoreTicking(t, tr, images)
	})
}

// TestDumpFailures checks the errors callers branch on, with a real CRIU:
// a missing process, a tree CRIU cannot dump (MPTCP socket), and dumps
// aborted by a hook and by a cancelled context, which must leave the tree
// running.
func TestDumpFailures(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()

	t.Run("no process", func(t *testing.T) {
		_, err := d.Dump(ctx, DumpOptions{Pid: 1 << 22, ImagesDir: imagesDir(t, "img")})
		if !errors.Is(err, ErrDump) || !errors.Is(err, ErrNoProcess) {
			t.Fatalf("got %v, want ErrDump and ErrNoProcess", err)
		}
	})

	t.Run("mptcp", func(t *testing.T) {
		tr := startTree(t, "listener", treeOpts{keepMPTCP: true, env: []string{"GODEBUG=multipathtcp=2"}})
		waitLine(t, tr.outPath, "tick ", 20*time.Second)
		_, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: imagesDir(t, "img")})
		var ce *Error
		if !errors.As(err, &ce) || !errors.Is(err, ErrDump) || !errors.Is(err, ErrMPTCP) || len(ce.Lines) == 0 {
			t.Fatalf("got %v, want *Error with log lines matching ErrDump and ErrMPTCP", err)
		}
		if !alive(tr.p.Pid) {
			t.Fatal("a failed dump killed the tree")
		}
		t.Logf("expected failure: %v", err)
	})

	t.Run("hook aborts", func(t *testing.T) {
		tr := startTree(t, "tree-parent", treeOpts{})
		port, _ := strconv.Atoi(strings.TrimPrefix(waitLine(t, tr.outPath, "ready ", 20*time.Second), "ready "))
		cl := dial(t, port)
		nonce, _ := cl.count(t)
		refused := errors.New("ingress proxy did not pause")
		res, err := d.Dump(ctx, DumpOptions{
			Pid:       tr.p.Pid,
			ImagesDir: imagesDir(t, "img"),
			Hooks:     Hooks{PostDump: func() error { return refused }},
		})
		if !errors.Is(err, ErrDump) || !errors.Is(err, ErrHook) || !errors.Is(err, refused) {
			t.Fatalf("got %v, want ErrDump, ErrHook and the hook's error", err)
		}
		if _, ok := res.Events.At(EventPostDump); !ok {
			t.Fatalf("events %+v lack post-dump", res.Events)
		}
		// Aborted after everything was dumped: the tree must be thawed,
		// its TCP connections out of repair mode and unlocked.
		if n, _ := cl.count(t); n != nonce {
			t.Fatalf("tree changed across an aborted dump: nonce %s, want %s", n, nonce)
		}
		if !alive(tr.p.Pid) {
			t.Fatal("an aborted dump killed the tree")
		}
	})

	t.Run("context cancelled", func(t *testing.T) {
		tr := startTree(t, "ticker", treeOpts{})
		waitLine(t, tr.outPath, "tick ", 20*time.Second)
		cctx, cancel := context.WithCancel(ctx)
		_, err := d.Dump(cctx, DumpOptions{
			Pid:       tr.p.Pid,
			ImagesDir: imagesDir(t, "img"),
			Hooks:     Hooks{PreDump: func() error { cancel(); return nil }},
		})
		if !errors.Is(err, ErrDump) || !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want ErrDump and context.Canceled", err)
		}
		// The tree keeps running and ticking.
		before, _ := os.ReadFile(tr.outPath)
		deadline := time.Now().Add(10 * time.Second)
		for {
			now, _ := os.ReadFile(tr.outPath)
			if len(now) > len(before) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("tree stopped after a cancelled dump")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := d.Dump(cctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: imagesDir(t, "img2")}); !errors.Is(err, context.Canceled) {
			t.Fatalf("dump with a done context: %v", err)
		}
	})
}

// TestIncrementalOnThisHost exercises pre-dumps where soft-dirty tracking
// exists, and otherwise checks that they are refused before anything runs.
func TestIncrementalOnThisHost(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	ok, detail, err := d.Feature(ctx, FeatureMemDirtyTrack)
	if err != nil {
		t.Fatalf("probe %s: %v", FeatureMemDirtyTrack, err)
	}
	tr := startTree(t, "ticker", treeOpts{})
	nonce := strings.Fields(waitLine(t, tr.outPath, "tick ", 20*time.Second))[1]
	if !ok {
		t.Logf("%s missing here (%s): pre-dumps must be refused", FeatureMemDirtyTrack, detail)
		if _, err := d.StartIncremental(ctx, tr.p.Pid); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("StartIncremental: %v, want ErrUnsupported", err)
		}
		_, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: imagesDir(t, "img"), ParentDir: "../pre"})
		if !errors.Is(err, ErrUnsupported) {
			t.Fatalf("dump with parent: %v, want ErrUnsupported", err)
		}
		if !alive(tr.p.Pid) {
			t.Fatal("refused pre-dump touched the tree")
		}
		return
	}
	// Soft-dirty tracking present: pre-dump twice, dump, restore.
	root := t.TempDir()
	for _, n := range []string{"1", "2", "final"} {
		if err := os.Mkdir(root+"/"+n, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s, err := d.StartIncremental(ctx, tr.p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.PreDump(ctx, DumpOptions{ImagesDir: root + "/1"}); err != nil {
		t.Fatalf("pre-dump 1: %v", err)
	}
	r2, err := s.PreDump(ctx, DumpOptions{ImagesDir: root + "/2", ParentDir: "../1"})
	if err != nil {
		t.Fatalf("pre-dump 2: %v", err)
	}
	fr, err := s.Dump(ctx, DumpOptions{ImagesDir: root + "/final", ParentDir: "../2"})
	if err != nil {
		t.Fatalf("final dump: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("pre-dump 2 skipped %d pages; final dump skipped %d, wrote %d",
		r2.Stats.PagesSkippedParent, fr.Stats.PagesSkippedParent, fr.Stats.PagesWritten)
	if fr.Stats.PagesSkippedParent == 0 {
		t.Fatal("final dump skipped no page of its parent")
	}
	if _, err := tr.p.Wait(); err != nil {
		t.Fatal(err)
	}
	_, err = restore(t, d, RestoreOptions{ImagesDir: root + "/final", AppendFiles: []string{tr.outPath, tr.errPath}})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	size := func() int { b, _ := os.ReadFile(tr.outPath); return len(b) }
	before := size()
	waitFor(t, 10*time.Second, func() bool { return size() > before })
	b, _ := os.ReadFile(tr.outPath)
	if !strings.Contains(string(b[before:]), "tick "+nonce+" ") {
		t.Fatal("restored tree does not tick with its nonce")
	}
}

func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

func appendLine(t testing.TB, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}

func logDump(t testing.TB, r *DumpResult) {
	t.Helper()
	t.Logf("dump pid %d: wall %v, setup %v, barrier %v, capture %v, finish %v; criu freezing %v frozen %v memdump %v memwrite %v; pages scanned %d written %d",
		r.Pid, r.Wall, r.Setup(), r.Barrier(), r.Capture(), r.Finish(),
		r.Stats.FreezingTime, r.Stats.FrozenTime, r.Stats.MemdumpTime, r.Stats.MemwriteTime,
		r.Stats.PagesScanned, r.Stats.PagesWritten)
}

func logRestore(t testing.TB, r *RestoreResult) {
	t.Helper()
	var ev []string
	for _, e := range r.Events {
		ev = append(ev, fmt.Sprintf("%s@%v", e.Name, e.At.Round(time.Microsecond)))
	}
	t.Logf("restore pid %d: wall %v; criu forking %v restore %v; pages restored %d; events %s",
		r.Pid, r.Wall, r.Stats.ForkingTime, r.Stats.RestoreTime, r.Stats.PagesRestored, strings.Join(ev, " "))
}

// TestConcurrentDumpsSharedCwd dumps two trees with the same working
// directory at the same time, over and over: CRIU's parasite uses a fixed
// directory there, so the driver must serialise them.
func TestConcurrentDumpsSharedCwd(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	shared := t.TempDir()
	a := startTree(t, "ticker", treeOpts{dir: shared})
	b := startTree(t, "ticker", treeOpts{dir: shared})
	waitLine(t, a.outPath, "tick ", 20*time.Second)
	waitLine(t, b.outPath, "tick ", 20*time.Second)
	for round := range 5 {
		errs := make(chan error, 2)
		for _, tr := range []*tree{a, b} {
			go func() {
				_, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: imagesDir(t, "img"), LeaveRunning: true})
				errs <- err
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
	if !alive(a.p.Pid) || !alive(b.p.Pid) {
		t.Fatal("a tree died")
	}
}

// TestParasiteDirInTheWay checks what happens when CRIU's parasite finds
// its directory taken: an empty leftover is cleared, anything else is
// reported as ErrBusy.
func TestParasiteDirInTheWay(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	cwd := t.TempDir()
	tr := startTree(t, "ticker", treeOpts{dir: cwd})
	waitLine(t, tr.outPath, "tick ", 20*time.Second)
	stale := filepath.Join(cwd, parasiteProcDir)
	if err := os.Mkdir(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: imagesDir(t, "img"), LeaveRunning: true}); err != nil {
		t.Fatalf("dump with an empty leftover: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(stale, "in-use"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: imagesDir(t, "img"), LeaveRunning: true})
	if !errors.Is(err, ErrDump) || !errors.Is(err, ErrBusy) {
		t.Fatalf("dump with the parasite's directory in use: %v, want ErrBusy", err)
	}
	if !alive(tr.p.Pid) {
		t.Fatal("failed dump killed the tree")
	}
}

// TestRestoreInheritPipe restores a tree whose stdout was a pipe to a
// reader outside it, handing the restored tree a new pipe by inherit-fd.
func TestRestoreInheritPipe(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("pipe:[%d]", st.Ino)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := shim.Start(ctx, shim.StartOptions{Exe: exe, Args: []string{exe}, Dir: t.TempDir(), Env: withRole("ticker"), Stdout: w})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(); _, _ = p.Wait() })
	br := bufio.NewReader(r)
	first, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	nonce := strings.Fields(first)[1]

	images := imagesDir(t, "images")
	if _, err := d.Dump(ctx, DumpOptions{Pid: p.Pid, ImagesDir: images}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	_, err = restore(t, d, RestoreOptions{ImagesDir: images, InheritFds: map[string]*os.File{key: w2}})
	w2.Close()
	if err != nil {
		t.Fatalf("restore with %s inherited: %v", key, err)
	}
	if err := r2.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(r2).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "tick "+nonce+" ") {
		t.Fatalf("restored tree wrote %q, %v to the new pipe; want a tick with nonce %s", line, err, nonce)
	}
}

// TestRestoreHookAborts refuses a restored tree from the post-restore hook:
// CRIU must remove it, and the driver reaps it.
func TestRestoreHookAborts(t *testing.T) {
	d := requireCRIU(t)
	ctx := t.Context()
	tr := startTree(t, "ticker", treeOpts{})
	waitLine(t, tr.outPath, "tick ", 20*time.Second)
	images := imagesDir(t, "images")
	if _, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: images}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	if _, err := tr.p.Wait(); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("fenced: a newer term owns this app")
	var seen int
	rr, err := restore(t, d, RestoreOptions{
		ImagesDir:   images,
		AppendFiles: []string{tr.outPath, tr.errPath},
		Hooks:       Hooks{PostRestore: func(pid int) error { seen = pid; return refused }},
	})
	if !errors.Is(err, ErrRestore) || !errors.Is(err, ErrHook) || !errors.Is(err, refused) {
		t.Fatalf("got %v, want ErrRestore, ErrHook and the hook's error", err)
	}
	if seen <= 0 || rr.Pid != 0 {
		t.Fatalf("hook saw pid %d, result pid %d", seen, rr.Pid)
	}
	waitState(t, seen, "", 10*time.Second) // killed by CRIU and reaped
	// The images are still good.
	_, err = restore(t, d, RestoreOptions{ImagesDir: images, AppendFiles: []string{tr.outPath, tr.errPath}})
	if err != nil {
		t.Fatalf("restore after a refused one: %v", err)
	}
}
