package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// checkpoint takes an epoch now on the OP; it returns once every clone
// has acknowledged it (or failed to).
func (s *kvService) checkpoint(t *testing.T) (epoch, barrier uint64) {
	t.Helper()
	_, op, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ep, err := op.Client.Checkpoint(ctx, s.Name)
	if err != nil {
		t.Fatalf("checkpoint %s on %s: %v", s.Name, op.Name, err)
	}
	return ep.Epoch, ep.Barrier
}

// lineConn is a client connection that reads answer lines.
type lineConn struct {
	net.Conn
	r *bufio.Reader
}

func dialLine(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{Conn: c, r: bufio.NewReader(c)}
}

// answer waits up to timeout for the next answer line.
func (c *lineConn) answer(timeout time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	line, err := c.r.ReadString('\n')
	return strings.TrimSpace(line), err
}

func (c *lineConn) send(t *testing.T, s string) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatalf("send %.40q: %v", s, err)
	}
}

// TestChaosBadInput feeds the service input at its edges, through a
// cluster whose app checkpoints only on demand, so that barriers fall
// exactly where the test puts them:
//   - a message over the framing limit (1 MiB): the connection is closed
//     and nothing of it reaches the app, before or after a failover;
//   - a message sent while both clones are stopped (sync journal: no clone
//     acknowledges it): the request waits, and is answered and applied
//     once when they continue;
//   - half a message at a barrier, completed after it, then the OP killed:
//     the promoted clone replays the completed message, which is applied
//     once.
func TestChaosBadInput(t *testing.T) {
	c := newCluster(t)
	c.startNodes("worker", "worker", "worker")
	s := c.runKV(c.nodes[0], kvOptions{Replicas: 2, Interval: time.Hour, Journal: "sync"})
	s.checkpoint(t)
	if ok, _, desc := s.inSync(1); !ok {
		t.Fatalf("clones after the first epoch: %s", desc)
	}
	_, op, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}
	addr := s.addrOf(op)

	// Over the framing limit.
	big := dialLine(t, addr)
	big.send(t, "INCR big 1 big-ok\n")
	if a, err := big.answer(10 * time.Second); err != nil || a != "1" {
		t.Fatalf("INCR big-ok: %q %v", a, err)
	}
	huge := "INCR big 1 big-huge " + strings.Repeat("x", 1<<20+1) + "\n"
	_ = big.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, werr := big.Write([]byte(huge))
	a, rerr := big.answer(10 * time.Second)
	if rerr == nil || errors.Is(rerr, os.ErrDeadlineExceeded) {
		t.Errorf("a message over the limit: answer %q, read error %v (write error %v); want the connection closed", a, rerr, werr)
	} else {
		t.Logf("a message over the limit: write error %v, read error %v", werr, rerr)
	}
	if v, err := kvInt(addr, "GET big"); err != nil || v != 1 {
		t.Errorf("big is %d (%v) after the oversized message, want 1", v, err)
	}

	// A clone that acknowledges late: both clones stopped.
	info, _, err := s.opInfo()
	if err != nil {
		t.Fatal(err)
	}
	var clones []*daemon
	for _, cl := range info.Clones {
		clones = append(clones, c.byName(cl.Node))
	}
	late := dialLine(t, addr)
	var since []time.Time
	for _, d := range clones {
		since = append(since, d.pause())
	}
	sent := time.Now()
	late.send(t, "INCR late 1 late-1\n")
	// Stopped for well under the OP's lease (fenceLease) and raft's leader
	// lease (300 ms with the fast preset): longer, and the OP rightly fences
	// itself for want of a majority, closing the connection.
	if a, err := late.answer(250 * time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("answered %q (%v) while no clone could store the message", a, err)
	}
	for i, d := range clones {
		d.resume(since[i])
	}
	a, err = late.answer(10 * time.Second)
	took := time.Since(sent)
	if err != nil || a != "1" {
		t.Fatalf("INCR late-1 after the clones resumed: %q %v", a, err)
	}
	t.Logf("a request waited %s for a clone to store it (clones stopped for %s)", took.Round(time.Millisecond), time.Since(since[0]).Round(time.Millisecond))

	// Half a message at a barrier.
	half := dialLine(t, addr)
	half.send(t, "INCR half 1 half-1\n")
	if a, err := half.answer(10 * time.Second); err != nil || a != "1" {
		t.Fatalf("INCR half-1: %q %v", a, err)
	}
	half.send(t, "INCR half 1 ")
	epoch, barrier := s.checkpoint(t)
	half.send(t, "half-2\n")
	if a, err := half.answer(10 * time.Second); err != nil || a != "2" {
		t.Fatalf("INCR half-2, completed after epoch %d: %q %v", epoch, a, err)
	}
	st, err := kvGetStats(addr)
	if err != nil {
		t.Fatal(err)
	}
	// The epoch holds everything up to the half message; the promoted
	// clone must replay its completion, once.
	killAt := s.killOP(t, op)
	var served string
	waitFor(t, 60*time.Second, "a clone serves after the kill of "+op.Name, func() (bool, string) {
		for _, a := range s.addrs() {
			if a == addr {
				continue
			}
			if v, err := kvInt(a, "GET half"); err == nil {
				served = a
				return true, fmt.Sprint(v)
			}
		}
		return false, "no node serves"
	})
	t.Logf("%s serves %s after the kill of %s (epoch %d, barrier %d)", s.nodeOfAddr(served), time.Since(killAt).Round(time.Millisecond), op.Name, epoch, barrier)
	if ev, ok := c.rec.find(killAt, func(ev nodeEvent) bool { return strings.HasPrefix(ev.Message, "replayed ") }); ok {
		t.Logf("%s: %s", ev.Node, ev.Message)
	} else {
		t.Errorf("no replay after the failover: the message completed after the barrier must be replayed")
	}
	for key, want := range map[string]int64{"big": 1, "late": 1, "half": 2} {
		if v, err := kvInt(served, "GET "+key); err != nil || v != want {
			t.Errorf("after the failover %s is %d (%v), want %d", key, v, err, want)
		}
	}
	ids, err := kvIDs(served)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]kvApplied{}
	for _, a := range ids {
		got[a.ID] = a
	}
	for _, id := range []string{"big-ok", "late-1", "half-1", "half-2"} {
		if a, ok := got[id]; !ok || a.Dups != 0 {
			t.Errorf("after the failover %s: %+v (applied %v), want applied once, delivered once", id, a, ok)
		}
	}
	if _, ok := got["big-huge"]; ok {
		t.Errorf("the oversized message was applied")
	}
	after, err := kvGetStats(served)
	if err != nil {
		t.Fatal(err)
	}
	if after.Applied != st.Applied || after.Partial != 0 {
		t.Errorf("stats before the kill %+v, after the failover %+v: want the same applied count and no partial line", st, after)
	}
	if err := kvCheck(served); err != nil {
		t.Error(err)
	}
}
