package introspect

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nodeOfNSPid reports whether n is the process with innermost pid nspid.
func isNSPid(n *Node, nspid int) bool {
	p := n.Process
	return n.Kind == KindProcess && p != nil && len(p.NSPID) > 0 && p.NSPID[len(p.NSPID)-1] == nspid
}

// watchFork asks the app to fork a child living ms milliseconds and waits
// for the feed to report it added and then removed. It returns whether the
// added node came from a scan (it has its NSpid) rather than from the
// connector's fork event alone.
func watchFork(t *testing.T, w *Watcher, a *appProc, ms int, timeout time.Duration) (scanned bool) {
	t.Helper()
	a.send(t, "fork "+strconv.Itoa(ms))
	line := a.waitLine(t, "forked ", 10*time.Second)
	nspid, _ := strconv.Atoi(strings.TrimPrefix(line, "forked "))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	added := ""
	for {
		u, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for child ns pid %d (added %q): %v", nspid, added, err)
		}
		for _, c := range u.Changes {
			if c.Node == nil || c.Node.Kind != KindProcess {
				continue
			}
			switch {
			case c.Op == OpAdded && added == "" && (isNSPid(c.Node, nspid) || c.Node.Process.PPID == a.pid && len(c.Node.Process.NSPID) == 0):
				added = c.Node.ID
				scanned = len(c.Node.Process.NSPID) > 0
				if scanned && c.Node.Process.PPID != a.pid {
					t.Errorf("child %s has ppid %d, want %d", c.Node.ID, c.Node.Process.PPID, a.pid)
				}
			case c.Op == OpRemoved && added != "" && c.Node.ID == added:
				return scanned
			}
		}
	}
}

func TestWatchFeed(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("end-to-end watcher test")
	}
	t.Run("connector", func(t *testing.T) {
		a, _, _, _ := startFullApp(t, appOpts{pidns: true, setsid: true})
		cfg := DefaultConfig()
		cfg.ScanInterval = 200 * time.Millisecond
		w, err := NewWatcher(context.Background(), a.pid, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if !w.UsesProcConnector() {
			if os.Getenv("CI") != "" {
				t.Fatal("process connector unavailable as root")
			}
			t.Skip("process connector unavailable on this kernel (CONFIG_PROC_EVENTS)")
		}
		first, err := w.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if first.Seq != 1 || len(first.Changes) != len(first.Graph.Nodes)+len(first.Graph.Edges) {
			t.Errorf("first update: seq %d, %d changes for %d nodes and %d edges", first.Seq, len(first.Changes), len(first.Graph.Nodes), len(first.Graph.Edges))
		}
		// A child that lives longer than a scan interval is scanned.
		if !watchFork(t, w, a, 700, 10*time.Second) {
			t.Errorf("a child living 700ms was only reported from its fork event")
		}
		// One that lives 1ms is reported from the kernel's fork event.
		watchFork(t, w, a, 1, 10*time.Second)

		// The root exits (and is reaped): the tree is removed, then Next
		// fails.
		a.stdin.Close()
		go a.cmd.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rootRemoved := false
		for {
			u, err := w.Next(ctx)
			if err != nil {
				if !errors.Is(err, ErrNoProcess) {
					t.Fatalf("after the root exited: %v, want ErrNoProcess", err)
				}
				break
			}
			for _, c := range u.Changes {
				if c.Op == OpRemoved && c.Node != nil && c.Node.ID == ProcessID(a.pid) {
					rootRemoved = true
				}
			}
		}
		if !rootRemoved {
			t.Errorf("the root's removal was not reported")
		}
	})
	t.Run("polling", func(t *testing.T) {
		a, _, _, _ := startFullApp(t, appOpts{pidns: true, setsid: true})
		cfg := DefaultConfig()
		cfg.ScanInterval = 200 * time.Millisecond
		cfg.UseProcConnector = false
		w, err := NewWatcher(context.Background(), a.pid, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if w.UsesProcConnector() {
			t.Fatal("connector used although disabled")
		}
		if _, err := w.Next(context.Background()); err != nil {
			t.Fatal(err)
		}
		// A child that lives exactly one scan interval is seen by polling.
		for i := 0; i < 3; i++ {
			if !watchFork(t, w, a, 200, 10*time.Second) {
				t.Errorf("polling reported a child without scanning it")
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Next(context.Background()); !errors.Is(err, ErrWatcherClosed) {
			t.Errorf("Next after Close = %v, want ErrWatcherClosed", err)
		}
	})
	t.Run("descriptors", func(t *testing.T) {
		// Opening and closing descriptors shows up as changes.
		a, _, _, _ := startFullApp(t, appOpts{pidns: true, setsid: true})
		cfg := DefaultConfig()
		cfg.ScanInterval = 100 * time.Millisecond
		w, err := NewWatcher(context.Background(), a.pid, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.Next(context.Background()); err != nil {
			t.Fatal(err)
		}
		a.send(t, "open probe.txt")
		path := strings.TrimPrefix(a.waitLine(t, "opened ", 10*time.Second), "opened ")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		file, root := "file:"+path, ProcessID(a.pid)
		waitEdge := func(op ChangeOp) {
			t.Helper()
			for {
				u, err := w.Next(ctx)
				if err != nil {
					t.Fatalf("waiting for holds edge %s %s: %v", op, file, err)
				}
				for _, c := range u.Changes {
					if c.Edge != nil && c.Op == op && c.Edge.Kind == EdgeHolds && c.Edge.From == root && c.Edge.To == file {
						return
					}
				}
			}
		}
		waitEdge(OpAdded)
		a.send(t, "close probe.txt")
		waitEdge(OpRemoved)
	})
}
