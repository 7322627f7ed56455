package introspect

import (
	"context"
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

// sysTime is the system part of cpuTime.
func sysTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Stime.Nano())
}

// BenchmarkScan scans a 100-process, 5000-descriptor tree and reports the
// CPU time per scan (cpu-ms/op) next to the wall time, and the procfs
// calls per scan, which the machine's load does not blur.
func BenchmarkScan(b *testing.B) {
	needRoot(b)
	loadFDIter() // scans do not wait for it
	a := startFarm(b)
	variants := []struct {
		name string
		cfg  func(*Config)
	}{
		{"default", func(c *Config) { *c = DefaultConfig() }},
		{"checkpoint", func(c *Config) { *c = CheckpointConfig() }},
		{"checkpoint-no-outside-holders", func(c *Config) { *c = CheckpointConfig(); c.OutsideHolders = false }},
		{"checkpoint-procfs", func(c *Config) { *c = CheckpointConfig(); c.ProcfsFDs = true }},
		{"default-procfs", func(c *Config) { *c = DefaultConfig(); c.ProcfsFDs = true }},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			cfg := DefaultConfig()
			v.cfg(&cfg)
			sc := NewScanner(cfg)
			defer sc.Close()
			g, err := sc.Scan(context.Background(), a.pid)
			if err != nil {
				b.Fatal(err)
			}
			checkFarm(b, g)
			b.ReportAllocs()
			b.ResetTimer()
			calls := sc.r.calls
			start, sys := cpuTime(), sysTime()
			for i := 0; i < b.N; i++ {
				if _, err := sc.Scan(context.Background(), a.pid); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(b.N)/1e6, "cpu-ms/op")
			b.ReportMetric(float64(sysTime()-sys)/float64(b.N)/1e6, "sys-ms/op")
			b.ReportMetric(float64(sc.r.calls-calls)/float64(b.N), "procfs-calls/op")
		})
	}
}

// TestScanCallBudget guards the cost of a freeze-window scan with a
// measure the machine's load cannot blur: the procfs calls it makes. A
// scan with CheckpointConfig of the 100-process, 5000-descriptor farm
// makes at most 2.1 calls per descriptor through procfs, everything
// included (process files, maps, directories), and at most 0.25 with the
// BPF iterator, which reads the descriptors in one pass; BenchmarkScan
// turns that into CPU time.
func TestScanCallBudget(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("starts 100 processes")
	}
	loadFDIter() // scans do not wait for it
	a := startFarm(t)
	for _, v := range []struct {
		name   string
		procfs bool
		budget float64
	}{{"procfs", true, 2.1}, {"bpf-iterator", false, 0.25}} {
		t.Run(v.name, func(t *testing.T) {
			cfg := CheckpointConfig()
			cfg.OutsideHolders = false // its cost depends on the rest of the machine
			cfg.ProcfsFDs = v.procfs
			sc := NewScanner(cfg)
			defer sc.Close()
			g, err := sc.Scan(context.Background(), a.pid)
			if err != nil {
				t.Fatal(err)
			}
			checkFarm(t, g)
			if !v.procfs {
				needIterator(t, sc)
			}
			fds := 0
			for _, p := range g.Processes() {
				fds += p.Process.FDCount
			}
			for i, name := range []string{"second scan", "third scan"} {
				before := sc.r.calls
				start := cpuTime()
				if _, err := sc.Scan(context.Background(), a.pid); err != nil {
					t.Fatal(err)
				}
				cpu := cpuTime() - start
				calls := sc.r.calls - before
				perFD := float64(calls) / float64(fds)
				t.Logf("%s: %d procfs calls for %d descriptors (%.2f per descriptor), %v CPU", name, calls, fds, perFD, cpu)
				if i == 1 && perFD > v.budget {
					t.Errorf("%.2f procfs calls per descriptor, budget %.2f", perFD, v.budget)
				}
			}
		})
	}
}
