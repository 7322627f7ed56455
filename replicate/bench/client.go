package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// LoadResult is what Load measured.
type LoadResult struct {
	// Requests answered in Elapsed, over all connections.
	Requests int64
	Elapsed  time.Duration
	// MaxGap is the longest time any connection waited for one answer.
	MaxGap time.Duration
}

// Rate is the answered requests per second.
func (r LoadResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Load sends WORK requests to the synthetic app at addr over conns
// connections, one request in flight on each, for d, and counts the
// answers. Any failed connection or unexpected answer ends it with an
// error: throughput is only meaningful while the app serves every client.
func Load(ctx context.Context, addr string, conns int, d time.Duration) (LoadResult, error) {
	return LoadWith(ctx, addr, "WORK", conns, d, 0)
}

// LoadWith is Load sending request (WORK or PING) instead of WORK, and
// waiting pace between an answer and the next request on a connection.
// PING changes nothing in the app's memory: paced, it measures
// availability (the longest wait for an answer, to within pace) without
// adding to the app's dirty pages or taking the CPU from what it measures.
func LoadWith(ctx context.Context, addr, request string, conns int, d, pace time.Duration) (LoadResult, error) {
	want := map[string]string{"WORK": "ok ", "PING": "pong"}[request]
	if want == "" {
		return LoadResult{}, fmt.Errorf("load: request %q: use WORK or PING", request)
	}
	if conns < 1 {
		conns = 1
	}
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	var dialer net.Dialer
	for range conns {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := dialer.DialContext(dctx, "tcp", addr)
		cancel()
		if err != nil {
			return LoadResult{}, fmt.Errorf("load: %w", err)
		}
		cs = append(cs, c)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu     sync.Mutex
		total  int64
		maxGap time.Duration
		errs   []error
		wg     sync.WaitGroup
	)
	start := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, gap, err := loadConn(ctx, c, request, want, pace)
			mu.Lock()
			defer mu.Unlock()
			total += n
			maxGap = max(maxGap, gap)
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	res := LoadResult{Requests: total, Elapsed: time.Since(start), MaxGap: maxGap}
	return res, errors.Join(errs...)
}

// loadConn sends request on c until ctx ends; each answer must start with
// want.
func loadConn(ctx context.Context, c net.Conn, request, want string, pace time.Duration) (n int64, maxGap time.Duration, err error) {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReader(c)
	line := []byte(request + "\n")
	for ctx.Err() == nil {
		sent := time.Now()
		if _, err := c.Write(line); err != nil {
			return n, maxGap, ignoreEnd(ctx, err)
		}
		answer, err := r.ReadString('\n')
		if err != nil {
			return n, maxGap, ignoreEnd(ctx, err)
		}
		if !strings.HasPrefix(answer, want) {
			return n, maxGap, fmt.Errorf("load: answer %q to %s", strings.TrimSpace(answer), request)
		}
		n++
		maxGap = max(maxGap, time.Since(sent))
		if pace > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(pace):
			}
		}
	}
	return n, maxGap, nil
}

// ignoreEnd drops an error caused by the end of the measurement.
func ignoreEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("load: %w", err)
}

// Ping sends one PING to addr and waits for the pong, within timeout.
func Ping(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("PING\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "pong" {
		return fmt.Errorf("answer %q to PING", strings.TrimSpace(line))
	}
	return nil
}

// FirstAnswer polls addrs (each every poll, a connection per attempt) until
// one of them answers PING, and returns that address and the time of the
// answer. An attempt whose connection is accepted waits up to 10 s for the
// answer (a service that holds requests until its app runs again answers
// within that attempt). It gives up when ctx ends.
func FirstAnswer(ctx context.Context, addrs []string, poll time.Duration) (string, time.Time, error) {
	if len(addrs) == 0 {
		return "", time.Time{}, errors.New("no address to poll")
	}
	type hit struct {
		addr string
		at   time.Time
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hits := make(chan hit, len(addrs))
	for _, a := range addrs {
		go func() {
			for ctx.Err() == nil {
				if err := Ping(ctx, a, 10*time.Second); err == nil {
					hits <- hit{a, time.Now()}
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(poll):
				}
			}
		}()
	}
	select {
	case h := <-hits:
		return h.addr, h.at, nil
	case <-ctx.Done():
		return "", time.Time{}, fmt.Errorf("no answer from %s: %w", strings.Join(addrs, ", "), ctx.Err())
	}
}
