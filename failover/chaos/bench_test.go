package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stop stops the app cluster-wide and waits until no copy runs.
func (s *kvService) stop(t testing.TB) {
	t.Helper()
	_, op, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := op.Client.Stop(ctx, s.Name); err != nil {
		t.Fatalf("stop %s: %v", s.Name, err)
	}
	waitFor(t, 30*time.Second, s.Name+" stops", func() (bool, string) {
		cp := s.copies()
		return len(cp) == 0, fmt.Sprintf("copies %v", cp)
	})
}

// benchConns is the number of concurrent client connections of the
// throughput benchmark.
const benchConns = 16

// hammer sends n increments over conns connections to addr, each
// connection one request at a time, and returns the requests per second.
// ready, when given, runs once every connection is open and before the
// first request.
func hammer(b *testing.B, addr, run string, n, conns int, ready ...func()) float64 {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	for _, f := range ready {
		f()
	}
	start := time.Now()
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := bufio.NewReader(c)
			w := bufio.NewWriter(c)
			_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
			for {
				k := next.Add(1)
				if k > int64(n) {
					return
				}
				fmt.Fprintf(w, "INCR b%d 1 %s-%d\n", i, run, k)
				if err := w.Flush(); err != nil {
					errs <- err
					return
				}
				line, err := r.ReadString('\n')
				if err != nil {
					errs <- err
					return
				}
				if _, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64); err != nil {
					errs <- fmt.Errorf("answer %q", line)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return float64(n) / elapsed.Seconds()
}

// BenchmarkServiceThroughput measures the reference app's throughput with
// 16 concurrent client connections (one request in flight each) through
// the ingress proxy of its OP (3 nodes, 2 clones, interval 1s), with the
// sync and the async journal, against the same app reached directly while
// it runs under doppel. It logs the ratios (goals: ≥ 0.70 sync, ≥ 0.90
// async).
func BenchmarkServiceThroughput(b *testing.B) {
	c := newCluster(b)
	c.startNodes("worker", "worker", "worker")
	ratios := map[string]float64{}
	for _, mode := range []string{"sync", "async"} {
		s := c.runKV(c.nodes[0], kvOptions{Replicas: 2, Interval: time.Second, Journal: mode})
		s.waitInSync(60 * time.Second)
		_, op, err := s.opInfo()
		if err != nil {
			b.Fatal(err)
		}
		pids := map[string]int{}
		for _, d := range c.nodes {
			pids[d.Name] = d.pid()
		}
		if cp := s.copies(); len(cp) == 1 {
			pids["app"] = cp[0]
		}
		var direct, proxied float64
		var cpuDirect, cpuProxy string
		b.Run(mode+"/direct", func(b *testing.B) {
			m := startCPU(pids)
			direct = hammer(b, s.Target, "d"+randomHex(4), b.N, benchConns)
			cpuDirect = m.report(b.N)
			b.ReportMetric(direct, "req/s")
		})
		b.Run(mode+"/proxy", func(b *testing.B) {
			m := startCPU(pids)
			proxied = hammer(b, s.addrOf(op), "p"+randomHex(4), b.N, benchConns)
			cpuProxy = m.report(b.N)
			b.ReportMetric(proxied, "req/s")
		})
		b.Logf("%s journal, direct: %s", mode, cpuDirect)
		b.Logf("%s journal, through the proxy on %s: %s", mode, op.Name, cpuProxy)
		if direct > 0 {
			ratios[mode] = proxied / direct
		}
		b.Logf("%s journal: %.0f req/s through the proxy, %.0f req/s direct: ratio %.2f", mode, proxied, direct, ratios[mode])
		s.stop(b)
	}
	b.Logf("throughput ratio proxy/direct: sync %.2f (goal ≥ 0.70), async %.2f (goal ≥ 0.90)", ratios["sync"], ratios["async"])
}

// BenchmarkFailover64MiB measures, for an app holding 64 MiB of resident
// memory (3 nodes, 2 clones, interval 1s, sync journal), the time from the
// kill of its OP node to the first request answered by the new OP; each
// iteration is one failover (run with -benchtime=5x or more). It reports
// the median (also as ns/op) and the 95th percentile.
func BenchmarkFailover64MiB(b *testing.B) {
	c := newCluster(b)
	c.startNodes("worker", "worker", "worker")
	s := c.runKV(c.nodes[0], kvOptions{Replicas: 2, Interval: time.Second, Journal: "sync", Ballast: 64})
	s.waitInSync(120 * time.Second)
	l := startLoad(loadConfig{Addrs: s.addrs(), Workers: 2, Run: randomHex(4), Pace: 5 * time.Millisecond})
	b.Cleanup(l.halt)
	if err := l.waitAcks(50, 30*time.Second); err != nil {
		b.Fatal(err)
	}
	var times []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		info, op, err := s.opInfo()
		if err != nil {
			b.Fatal(err)
		}
		killAt := s.killOP(b, op)
		ft, newOP := measureFailover(b, c, s, l, op.Name, killAt, 60*time.Second)
		times = append(times, ft.Served)
		b.Logf("failover %d: killed %s (epoch %d); %s answers %s after the kill (promoted %s, open %s); %s",
			i+1, op.Name, info.NewestEpoch, newOP, ft.Served.Round(time.Millisecond), ft.Promoted.Round(time.Millisecond), ft.Open.Round(time.Millisecond), ft.Restore)
		b.StopTimer()
		op.restart()
		s.waitInSync(120*time.Second, op.Name)
		if err := l.waitAcks(20, 30*time.Second); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	l.halt()
	if errs := l.errs(); len(errs) > 0 {
		b.Fatal(errs)
	}
	ids, err := kvIDs(s.addrOf(mustOP(b, s)))
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range l.verify(ids) {
		b.Error(p)
	}
	med, p95 := percentile(times, 50), percentile(times, 95)
	b.ReportMetric(float64(med.Nanoseconds()), "ns/op")
	b.ReportMetric(float64(med.Milliseconds()), "ms-median")
	b.ReportMetric(float64(p95.Milliseconds()), "ms-p95")
	b.Logf("64 MiB app: %d failover(s), kill → first answer median %s, p95 %s", len(times), med.Round(time.Millisecond), p95.Round(time.Millisecond))
}

// mustOP returns the app's OP node.
func mustOP(t testing.TB, s *kvService) *daemon {
	t.Helper()
	_, op, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}
	return op
}
