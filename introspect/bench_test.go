package introspect

import (
	"context"
	"sort"
	"syscall"
	"testing"
	"time"
)

const (
	farmProcesses = 100
	farmMinFDs    = 5000
)

// startFarm starts a tree of 100 processes holding about 5000 descriptors
// (files, pipes, socketpairs, /dev/null, eventfds, TCP listeners).
func startFarm(tb testing.TB) *appProc {
	tb.Helper()
	return startApp(tb, appOpts{pidns: true, setsid: true}, "farm", "100", tb.TempDir())
}

func checkFarm(tb testing.TB, g *Graph) {
	tb.Helper()
	procs := g.Processes()
	fds := 0
	for _, p := range procs {
		fds += p.Process.FDCount
	}
	if len(procs) != farmProcesses || fds < farmMinFDs {
		tb.Fatalf("farm: %d processes, %d fds; want %d and >= %d", len(procs), fds, farmProcesses, farmMinFDs)
	}
}

// cpuTime is the user plus system time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkScan scans a 100-process, 5000-descriptor tree and reports the
// CPU time per scan (cpu-ms/op) next to the wall time.
func BenchmarkScan(b *testing.B) {
	needRoot(b)
	a := startFarm(b)
	variants := []struct {
		name string
		cfg  func(*Config)
	}{
		{"default", func(c *Config) { *c = DefaultConfig() }},
		{"checkpoint", func(c *Config) { *c = CheckpointConfig() }},
		{"checkpoint-no-outside-holders", func(c *Config) { *c = CheckpointConfig(); c.OutsideHolders = false }},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			cfg := DefaultConfig()
			v.cfg(&cfg)
			sc := NewScanner(cfg)
			g, err := sc.Scan(context.Background(), a.pid)
			if err != nil {
				b.Fatal(err)
			}
			checkFarm(b, g)
			b.ReportAllocs()
			b.ResetTimer()
			start := cpuTime()
			for i := 0; i < b.N; i++ {
				if _, err := sc.Scan(context.Background(), a.pid); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(b.N)/1e6, "cpu-ms/op")
		})
	}
}

// TestScanCPUBudget checks the freeze-window budget: a scan of a
// 100-process, 5000-descriptor tree with CheckpointConfig (the scan the
// checkpoint engine runs while the tree is frozen) costs under 50 ms of
// CPU, median of ten scans.
func TestScanCPUBudget(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("starts 100 processes")
	}
	if raceEnabled {
		t.Skip("CPU budget is meaningless under the race detector; BenchmarkScan measures it")
	}
	a := startFarm(t)
	sc := NewScanner(CheckpointConfig())
	g, err := sc.Scan(context.Background(), a.pid)
	if err != nil {
		t.Fatal(err)
	}
	checkFarm(t, g)
	var costs []time.Duration
	for i := 0; i < 10; i++ {
		start := cpuTime()
		if _, err := sc.Scan(context.Background(), a.pid); err != nil {
			t.Fatal(err)
		}
		costs = append(costs, cpuTime()-start)
	}
	sort.Slice(costs, func(i, j int) bool { return costs[i] < costs[j] })
	median := costs[len(costs)/2]
	t.Logf("CPU per scan of %d processes: median %v, min %v, max %v", farmProcesses, median, costs[0], costs[len(costs)-1])
	if median >= 50*time.Millisecond {
		t.Errorf("median CPU per scan %v, budget 50ms", median)
	}
}
