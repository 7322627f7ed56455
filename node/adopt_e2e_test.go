package node

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"doppel/replicate/shim"
)

// TestE2EAdopt: a pageapp started without doppel, in the host PID
// namespace, is adopted by a daemon with the CLI; it keeps its state, now
// runs in a PID namespace of its own under the daemon's init, is
// replicated to the other node, and is restored there from an epoch with
// the same state.
func TestE2EAdopt(t *testing.T) {
	requireE2E(t)
	c := newCluster(t)
	n1 := c.start()
	n2 := c.start()
	name, addr := c.newApp("adopted"), c.appAddr(0)

	// The app, as a user would have started it: a child of the test,
	// output to a file, no descriptor shared with anyone else.
	out, err := os.OpenFile(filepath.Join(t.TempDir(), "pageapp.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	_ = unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	args := pageappArgs(addr)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = shim.WithoutMPTCP(os.Environ())
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // as a daemon: CRIU cannot dump a session with no leader (sid 0)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = unix.Kill(pid, unix.SIGKILL) })
	waitFor(t, 10*time.Second, "pageapp answers on "+addr, func() (bool, string) {
		st, err := queryApp(addr)
		if err != nil {
			return false, err.Error()
		}
		return st.OK && st.Counter > 5, fmt.Sprintf("%+v", st)
	})
	before, err := queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	got := c.mustCLI(n1.Sock, "adopt", "--pid", fmt.Sprint(pid), "--name", name, "--replicas", "1", "--interval", "500ms")
	if want := fmt.Sprintf("pid %d adopted: %s running on n1", pid, name); !strings.Contains(got, want) {
		t.Fatalf("doppel adopt printed %q, want %q", got, want)
	}
	t.Logf("measured: doppel adopt took %s", time.Since(start).Round(time.Millisecond))
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("the original pid %d still runs", pid)
	}
	info, err := opInfo(t, n1, name)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Readlink("/proc/self/ns/pid")
	initNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", info.Pid))
	if info.Pid == 0 || initNS == "" || initNS == self {
		t.Fatalf("init pid %d in PID namespace %q (the host's is %s)", info.Pid, initNS, self)
	}
	waitFor(t, 10*time.Second, "the adopted app ticks on", func() (bool, string) {
		st, err := queryApp(addr)
		if err != nil {
			return false, err.Error()
		}
		return st.OK && st.Seed == before.Seed && st.Counter > before.Counter+10, fmt.Sprintf("%+v, before %+v", st, before)
	})
	waitFor(t, 30*time.Second, "the clone acknowledges two epochs", func() (bool, string) {
		info, err := opInfo(t, n1, name)
		if err != nil {
			return false, err.Error()
		}
		return clonesInSync(info, 2)
	})

	// The last epoch, of a paused app, is restored on the clone's node.
	if ans, err := askApp(addr, "PAUSE"); err != nil || !strings.HasPrefix(ans, "paused ") {
		t.Fatalf("PAUSE: %q %v", ans, err)
	}
	want, err := queryApp(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.mustCLI(n1.Sock, "checkpoint", name)
	stopApp(t, c, n1, name, addr)
	ep := restoreHere(t, c, n2, name)
	if st, err := queryApp(addr); err != nil || st != want {
		t.Fatalf("restored on n2 from epoch %d: %+v (%v), want %+v", ep, st, err, want)
	}
	t.Logf("n2 restored epoch %d of the adopted app: counter %d, same state", ep, want.Counter)
	stopApp(t, c, n2, name, addr)
}
