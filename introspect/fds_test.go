package introspect

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// holdings lists "pid fd node" for every descriptor of the graph, sorted.
func holdings(g *Graph) []string {
	var out []string
	for _, n := range g.Nodes {
		for _, h := range n.Holders {
			out = append(out, strconv.Itoa(h.PID)+" "+strconv.Itoa(h.FD)+" "+n.ID+" "+h.Access)
		}
	}
	slices.Sort(out)
	return out
}

// minus returns the elements of a not in b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// TestRescanDescriptors checks that a reused Scanner, which reads the
// descriptor numbers of the last scan instead of listing them when the
// count is unchanged, sees what a new Scanner sees as descriptors are
// opened, closed and replaced at the same number.
func TestRescanDescriptors(t *testing.T) {
	needRoot(t)
	a, _, _, _ := startFullApp(t, appOpts{pidns: true, setsid: true})
	cfg := CheckpointConfig()
	cfg.OutsideHolders = false
	sc := NewScanner(cfg)
	defer sc.Close()
	check := func(step string, want, gone string) {
		t.Helper()
		// The app's processes may still change a descriptor on their
		// own (the runtime starting up): the reused scanner is judged
		// by a scan between two equal new ones.
		scan := func(scan func(context.Context, int) (*Graph, error)) []string {
			g, err := scan(context.Background(), a.pid)
			if err != nil {
				t.Fatal(err)
			}
			return holdings(g)
		}
		fresh := func(ctx context.Context, pid int) (*Graph, error) { return Scan(ctx, pid, cfg) }
		var got, ref []string
		stable := false
		for try := 0; try < 10 && !stable; try++ {
			before := scan(fresh)
			got = scan(sc.Scan)
			ref = scan(fresh)
			stable = slices.Equal(before, ref)
			if !stable {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if !stable {
			t.Fatalf("%s: the app's descriptors keep changing", step)
		}
		if !slices.Equal(got, ref) {
			t.Errorf("%s: reused scanner differs from a new one: only reused %q, only new %q", step, minus(got, ref), minus(ref, got))
		}
		joined := strings.Join(got, "\n")
		if want != "" && !strings.Contains(joined, "file:"+want) {
			t.Errorf("%s: %s not held", step, want)
		}
		if gone != "" && strings.Contains(joined, "file:"+gone) {
			t.Errorf("%s: %s still held", step, gone)
		}
	}
	open := func(name string) string {
		a.send(t, "open "+name)
		return strings.TrimPrefix(a.waitLine(t, "opened ", 10*time.Second), "opened ")
	}
	closeFile := func(name string) {
		a.send(t, "close "+name)
		a.waitLine(t, "closed ", 10*time.Second)
	}
	check("first scan", "", "")
	check("unchanged", "", "")
	first := open("first.txt")
	check("opened", first, "")
	closeFile("first.txt")
	second := open("second.txt") // the same number, the same count
	check("replaced", second, first)
	third := open("third.txt")
	check("added", third, first)
	closeFile("second.txt")
	check("closed", third, second)
}
