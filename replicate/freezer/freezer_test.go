package freezer

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func openOrSkip(t *testing.T) *Cgroup {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; freezer tests need it")
		}
		t.Skip("needs root: run sudo scripts/test.sh")
	}
	cg, err := Open(DefaultConfig(), "test-"+t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cg.Remove() })
	return cg
}

func TestFreezeThaw(t *testing.T) {
	cg := openOrSkip(t)
	cmd := exec.Command("sh", "-c", `i=0; while :; do i=$((i+1)); echo $i; done`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cg.Thaw(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := cg.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	pids, err := cg.Pids()
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("Pids = %v, %v", pids, err)
	}
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cg.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if f, err := cg.Frozen(); err != nil || !f {
		t.Fatalf("Frozen = %v, %v", f, err)
	}
	// Once the pipe is drained, a frozen writer adds nothing.
	for drained := false; !drained; {
		select {
		case <-lines:
		case <-time.After(50 * time.Millisecond):
			drained = true
		}
	}
	select {
	case l := <-lines:
		t.Fatalf("frozen process wrote %q", l)
	case <-time.After(200 * time.Millisecond):
	}
	if err := cg.Thaw(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lines:
	case <-time.After(10 * time.Second):
		t.Fatal("process did not resume after Thaw")
	}
}

func TestBadName(t *testing.T) {
	for _, n := range []string{"", "a/b", "..", "."} {
		if _, err := Open(DefaultConfig(), n); err == nil {
			t.Errorf("Open(%q) succeeded", n)
		}
	}
}

func TestUnsupported(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Root = t.TempDir()
	if _, err := Open(cfg, "x"); err == nil {
		t.Fatal("Open on an empty root succeeded")
	}
}

// TestMain lets the test binary stand in for an app that keeps starting
// programs (os/exec, that is vfork), when FREEZER_TEST_VFORK is set.
func TestMain(m *testing.M) {
	if os.Getenv("FREEZER_TEST_VFORK") == "1" {
		for {
			_ = exec.Command("/bin/true").Run()
		}
	}
	os.Exit(m.Run())
}

// TestFreezeSettlesVfork: a tree that keeps starting programs is often
// caught with a task waiting for its vfork child to exec (a v1 freezer then
// stays FREEZING; v2 counts the task frozen though CRIU cannot seize it);
// Freeze returns only once the tree is frozen and no task of it waits so.
func TestFreezeSettlesVfork(t *testing.T) {
	cg := openOrSkip(t)
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), "FREEZER_TEST_VFORK=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cg.Thaw(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := cg.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	caught := 0 // freezes of the kernel alone that left a task in vfork wait
	for i := 0; i < 200; i++ {
		waiting, err := cg.freezeOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(waiting) > 0 {
			caught++
		}
		if err := cg.Thaw(); err != nil {
			t.Fatal(err)
		}
		if err := cg.Freeze(ctx); err != nil {
			t.Fatal(err)
		}
		if f, err := cg.Frozen(); err != nil || !f {
			t.Fatalf("freeze %d: Frozen = %v, %v after Freeze", i, f, err)
		}
		if w := cg.vforkWaiters(); len(w) > 0 {
			t.Fatalf("freeze %d: Freeze returned with %v waiting for a vfork child", i, w)
		}
		if err := cg.Thaw(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("the kernel's freeze alone left a task in vfork wait %d times in 200", caught)
	if caught == 0 {
		t.Errorf("no freeze caught a task in vfork wait: the test did not exercise Freeze's retry")
	}
}

// TestSweep checks that Sweep removes the empty app cgroups and then
// their parent, and leaves a cgroup with a process in it.
func TestSweep(t *testing.T) {
	openOrSkip(t)
	cfg := DefaultConfig()
	cfg.Parent = "doppel-sweep-test"
	busy, err := Open(cfg, "busy")
	if err != nil {
		t.Fatal(err)
	}
	idle, err := Open(cfg, "idle")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = busy.Remove()
		_ = idle.Remove()
		_ = Sweep(cfg)
	})
	if err := busy.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := Sweep(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(idle.Path); !os.IsNotExist(err) {
		t.Errorf("the empty cgroup is still there (%v)", err)
	}
	if pids, err := busy.Pids(); err != nil || len(pids) != 1 {
		t.Fatalf("the busy cgroup: pids %v, %v; want the sleep in it", pids, err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	// The kernel moves the exited process out; wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for pids, _ := busy.Pids(); len(pids) > 0; pids, _ = busy.Pids() {
		if time.Now().After(deadline) {
			t.Fatalf("the sleep is still in its cgroup: %v", pids)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := Sweep(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(busy.Path)); !os.IsNotExist(err) {
		t.Errorf("the parent is still there after its last cgroup emptied (%v)", err)
	}
	root := DefaultConfig()
	root.Parent = ""
	if err := Sweep(root); err == nil {
		t.Error("Sweep of the hierarchy's root was not refused")
	}
}

func TestExited(t *testing.T) {
	if exited(strconv.Itoa(os.Getpid())) {
		t.Error("this process counts as exited")
	}
	if !exited("999999999") {
		t.Error("a pid that does not exist counts as running")
	}
}
