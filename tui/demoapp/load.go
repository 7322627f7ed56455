package demoapp

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Load drives a light, steady load against a Server: one connection,
// one INCR and one SET every Interval, reconnecting (with backoff) when the
// server goes away, as it does during a failover.
type Load struct {
	// Addr is the server's address.
	Addr string
	// Interval is the time between two rounds of requests.
	Interval time.Duration
	// Timeout bounds a connection attempt and one request.
	Timeout time.Duration

	mu    sync.Mutex
	stats LoadStats
}

// LoadStats counts what a Load did.
type LoadStats struct {
	OK, Failed int64
	// Counter is the last value of the "hits" counter the server returned.
	Counter int64
	// Connected says whether the load holds a connection now.
	Connected bool
	LastErr   string
}

// NewLoad returns a load of one round every interval against addr.
func NewLoad(addr string, interval time.Duration) *Load {
	return &Load{Addr: addr, Interval: interval, Timeout: 2 * time.Second}
}

// Stats returns the counts so far.
func (l *Load) Stats() LoadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

func (l *Load) record(f func(*LoadStats)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(&l.stats)
}

// Run drives the load until ctx ends.
func (l *Load) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	t := time.NewTicker(l.Interval)
	defer t.Stop()
	n := 0
	for ctx.Err() == nil {
		d := net.Dialer{Timeout: l.Timeout}
		c, err := d.DialContext(ctx, "tcp", l.Addr)
		if err != nil {
			l.record(func(s *LoadStats) { s.Failed++; s.Connected = false; s.LastErr = err.Error() })
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		l.record(func(s *LoadStats) { s.Connected = true })
		stop := context.AfterFunc(ctx, func() { c.Close() })
		r := bufio.NewReader(c)
		for ctx.Err() == nil {
			n++
			if err := l.round(c, r, n); err != nil {
				l.record(func(s *LoadStats) { s.Failed++; s.LastErr = err.Error() })
				break
			}
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
		stop()
		c.Close()
		l.record(func(s *LoadStats) { s.Connected = false })
	}
}

// round sends one INCR and one SET.
func (l *Load) round(c net.Conn, r *bufio.Reader, n int) error {
	ask := func(line string) (string, error) {
		_ = c.SetDeadline(time.Now().Add(l.Timeout))
		if _, err := fmt.Fprintln(c, line); err != nil {
			return "", err
		}
		ans, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		ans = strings.TrimSpace(ans)
		if strings.HasPrefix(ans, "ERR") {
			return "", fmt.Errorf("%s: %s", line, ans)
		}
		return ans, nil
	}
	v, err := ask("INCR hits")
	if err != nil {
		return err
	}
	cnt, _ := strconv.ParseInt(v, 10, 64)
	if _, err := ask(fmt.Sprintf("SET key%d value%d", n%100, n)); err != nil {
		return err
	}
	l.record(func(s *LoadStats) { s.OK += 2; s.Counter = cnt })
	return nil
}
