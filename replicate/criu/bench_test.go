package criu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkDump256M dumps a tree holding 256 MiB of touched memory to
// tmpfs, leaving it running, alternately through the driver (go-criu swrk,
// notifications, stats) and through a bare `criu dump --leave-running`
// with the same options, and reports both and their ratio.
//
//	go test -run '^$' -bench Dump256M -benchtime 5x ./replicate/criu/
func BenchmarkDump256M(b *testing.B) {
	d := requireCRIU(b)
	ctx := context.Background()
	tr := startTree(b, "mem", treeOpts{env: []string{"MEM_MIB=256"}})
	waitLine(b, tr.outPath, "ready", 60*time.Second)
	if rss := treeRSS(b, tr.p.Pid); rss < 256<<20 {
		b.Fatalf("tree RSS %d MiB, want >= 256", rss>>20)
	}
	shm, err := os.MkdirTemp("/dev/shm", "doppel-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(shm) })
	args := cliArgs(d.Config())

	var driver, cli, frozen, cliFrozen time.Duration
	dumpDriver := func(i int) {
		dir := filepath.Join(shm, "driver-"+strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		r, err := d.Dump(ctx, DumpOptions{Pid: tr.p.Pid, ImagesDir: dir, LeaveRunning: true})
		if err != nil {
			b.Fatal(err)
		}
		driver += r.Wall
		frozen += r.Stats.FrozenTime
		os.RemoveAll(dir)
	}
	dumpCLI := func(i int) {
		dir := filepath.Join(shm, "cli-"+strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(d.Path(), append([]string{"dump", "--leave-running", "-t", strconv.Itoa(tr.p.Pid), "-D", dir, "-o", "dump.log"}, args...)...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		cli += time.Since(start)
		if err != nil {
			b.Fatalf("criu dump: %v: %s %v", err, out, logErrors(filepath.Join(dir, "dump.log")))
		}
		s, err := readDumpStats(dir)
		if err != nil {
			b.Fatal(err)
		}
		cliFrozen += s.FrozenTime
		os.RemoveAll(dir)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Alternate which goes first so neither always meets a warm cache.
		if i%2 == 0 {
			dumpDriver(i)
			dumpCLI(i)
		} else {
			dumpCLI(i)
			dumpDriver(i)
		}
	}
	b.StopTimer()
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / n }
	b.ReportMetric(ms(driver), "driver-ms/dump")
	b.ReportMetric(ms(cli), "cli-ms/dump")
	b.ReportMetric(float64(driver)/float64(cli), "driver/cli")
	b.ReportMetric(ms(frozen), "driver-frozen-ms")
	b.ReportMetric(ms(cliFrozen), "cli-frozen-ms")
}

// cliArgs is the command line equivalent of the driver's options.
func cliArgs(c Config) []string {
	a := []string{"-v" + strconv.Itoa(c.LogLevel)}
	flag := func(on bool, f string) {
		if on {
			a = append(a, f)
		}
	}
	flag(c.TCPEstablished, "--tcp-established")
	flag(c.TCPSkipInFlight, "--skip-in-flight")
	flag(c.ExtUnixSk, "--ext-unix-sk")
	flag(c.FileLocks, "--file-locks")
	flag(c.ShellJob, "--shell-job")
	flag(c.LinkRemap, "--link-remap")
	if c.NetworkLock != "" {
		a = append(a, "--network-lock", c.NetworkLock)
	}
	return a
}

// treeRSS sums VmRSS over a process and its descendants.
func treeRSS(t testing.TB, root int) int64 {
	t.Helper()
	var total int64
	todo := []int{root}
	for len(todo) > 0 {
		pid := todo[0]
		todo = todo[1:]
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb << 10
			}
		}
		tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		for _, task := range tasks {
			c, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/children")
			for _, f := range strings.Fields(string(c)) {
				if n, err := strconv.Atoi(f); err == nil {
					todo = append(todo, n)
				}
			}
		}
	}
	return total
}
