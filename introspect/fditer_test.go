package introspect

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// needIterator fails in CI, and skips elsewhere, when sc cannot use the
// BPF iterator.
func needIterator(t testing.TB, sc *Scanner) {
	t.Helper()
	if _, err := loadFDIter(); err != nil && sc.iterErr == nil {
		sc.iterErr = err
	}
	if sc.FDSource() == "bpf-iterator" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("descriptors read through %s; CI machines run as root on a kernel with BTF", sc.FDSource())
	}
	t.Skipf("descriptors read through %s", sc.FDSource())
}

// fdView is what a graph says of descriptors and what rests on them:
// every node but the processes' changing counters, the edges and the
// findings, as sorted JSON lines.
func fdView(g *Graph) []string {
	var out []string
	for _, n := range g.Nodes {
		c := *n
		if c.Process != nil {
			out = append(out, fmt.Sprintf("process %s: %d fds, unreadable %q", c.ID, c.Process.FDCount, c.Process.Unreadable))
			continue
		}
		b, _ := json.Marshal(&c)
		out = append(out, string(b))
	}
	for _, e := range g.Edges {
		b, _ := json.Marshal(e)
		out = append(out, string(b))
	}
	for _, f := range g.Preflight() {
		out = append(out, string(f.Level)+" "+f.Node+" "+f.Reason)
	}
	slices.Sort(out) // edges come in no set order
	return out
}

// TestFDIteratorMatchesProcfs scans the same trees reading descriptors
// through the BPF iterator and through procfs, with both configurations,
// and checks that the graphs agree: every resource kind the app holds, a
// file whose path is too long for an iterator record, and a thread with
// a descriptor table of its own (which procfs does not show).
func TestFDIteratorMatchesProcfs(t *testing.T) {
	needRoot(t)
	loadFDIter() // scans do not wait for it
	app, _, dir, _ := startFullApp(t, appOpts{pidns: true, setsid: true})
	long := strings.Repeat("d", 200) + "/" + strings.Repeat("e", 200)
	if err := os.MkdirAll(filepath.Join(dir, long), 0o755); err != nil {
		t.Fatal(err)
	}
	long += "/file"
	app.send(t, "open "+long)
	app.waitLine(t, "opened ", 10*time.Second)
	app.send(t, "thread-open thread-own")
	app.waitLine(t, "thread-opened ", 10*time.Second)
	bl := startApp(t, appOpts{pidns: true}, "blockers")

	for _, cfg := range []struct {
		name string
		cfg  Config
	}{{"default", DefaultConfig()}, {"checkpoint", CheckpointConfig()}} {
		for _, pid := range []int{app.pid, bl.pid} {
			viaProcfs := cfg.cfg
			viaProcfs.ProcfsFDs = true
			want, err := Scan(context.Background(), pid, viaProcfs)
			if err != nil {
				t.Fatal(err)
			}
			sc := NewScanner(cfg.cfg)
			sc.forceIter = true // the blockers tree is too small to pay
			// The first scan reads the root in the first pass and the
			// rest in a second; the next ones read all in one pass.
			for _, scan := range []string{"first", "second"} {
				got, err := sc.Scan(context.Background(), pid)
				if err != nil {
					t.Fatal(err)
				}
				needIterator(t, sc)
				w, g := fdView(want), fdView(got)
				if !slices.Equal(w, g) {
					t.Errorf("%s config, pid %d, %s scan: the iterator's graph differs from procfs's", cfg.name, pid, scan)
					for i := range min(len(w), len(g)) {
						if w[i] != g[i] {
							t.Logf("first difference, line %d:\nprocfs:   %s\niterator: %s", i, w[i], g[i])
							break
						}
					}
					for _, l := range w {
						if !slices.Contains(g, l) {
							t.Logf("only procfs:   %s", l)
						}
					}
					for _, l := range g {
						if !slices.Contains(w, l) {
							t.Logf("only iterator: %s", l)
						}
					}
				}
				if pid == app.pid {
					var sawLong, sawThread bool
					for _, n := range got.Nodes {
						sawLong = sawLong || n.File != nil && strings.HasSuffix(n.File.Path, long)
						sawThread = sawThread || n.File != nil && strings.HasSuffix(n.File.Path, "thread-own")
					}
					if !sawLong || sawThread {
						t.Errorf("%s scan: long path found %v (want true), thread's own file found %v (want false)", scan, sawLong, sawThread)
					}
				}
			}
			sc.Close()
		}
	}
}

// TestIteratorOnlyWhenItPays checks that a tree of a few descriptors is
// read through procfs: an iterator pass walks every file of the machine.
func TestIteratorOnlyWhenItPays(t *testing.T) {
	needRoot(t)
	loadFDIter()
	bl := startApp(t, appOpts{pidns: true}, "blockers")
	sc := NewScanner(CheckpointConfig())
	defer sc.Close()
	for range 2 {
		if _, err := sc.Scan(context.Background(), bl.pid); err != nil {
			t.Fatal(err)
		}
		if src := sc.FDSource(); !strings.HasPrefix(src, "procfs for ") {
			t.Fatalf("FDSource = %q, want procfs because the iterator does not pay", src)
		}
		if sc.recs != nil {
			t.Fatal("the iterator was read for a tree it does not pay for")
		}
	}
}
