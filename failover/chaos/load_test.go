package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// loadConfig configures a load: concurrent workers, each sending numbered
// increments of its own key through the service, one at a time.
type loadConfig struct {
	// Addrs are the service addresses of every node; a worker that loses
	// its connection tries them in turn until one answers.
	Addrs []string
	// Workers is the number of concurrent connections.
	Workers int
	// Run prefixes every request id, unique per load.
	Run string
	// Keys prefixes the workers' keys ("k" when empty): loads that run
	// side by side need their own.
	Keys string
	// TryTimeout bounds one attempt (connect, send, reply).
	TryTimeout time.Duration
	// GiveUp bounds one request over all its attempts; past it the worker
	// stops with an error and its request stays pending (maybe applied).
	GiveUp time.Duration
	// Pace is the shortest time between the starts of two requests of a
	// worker (0: back to back), to bound the state the app accumulates.
	Pace time.Duration
}

// ack is one acknowledged request.
type ack struct {
	ID    string
	Seq   int   // request number of its worker, from 1
	Value int64 // the app's answer: the key's value after it
	// Sent and Got frame the attempt that was answered; Addr is where.
	Sent, Got time.Time
	Addr      string
}

// load drives the workers until stopped. Each worker increments key
// "<Keys><worker>" by 1 per request with id "<run>-w<worker>-<seq>", and retries
// an unanswered request with the same id (over a new connection, on
// whichever node serves), so every acknowledged value must equal its
// request number.
type load struct {
	cfg   loadConfig
	ws    []*worker
	stop  chan struct{}
	abort chan struct{}
	wg    sync.WaitGroup
}

type worker struct {
	n   int
	cfg *loadConfig

	mu         sync.Mutex
	acks       []ack
	sends      map[int]int // request number → times written to a connection
	pending    int         // request given up on, 0 if none
	err        error
	reconnects int

	conn  net.Conn
	rd    *bufio.Reader
	next  int // index in Addrs to try first
	abort <-chan struct{}
}

// errDropped ends a request the load was told to drop.
var errDropped = errors.New("load dropped before the request was answered")

func (w *worker) dropped() bool {
	select {
	case <-w.abort:
		return true
	default:
		return false
	}
}

// startLoad starts the workers.
func startLoad(cfg loadConfig) *load {
	if cfg.TryTimeout == 0 {
		cfg.TryTimeout = 3 * time.Second
	}
	if cfg.GiveUp == 0 {
		cfg.GiveUp = 90 * time.Second
	}
	if cfg.Keys == "" {
		cfg.Keys = "k"
	}
	l := &load{cfg: cfg, stop: make(chan struct{}), abort: make(chan struct{})}
	for i := range cfg.Workers {
		w := &worker{n: i, cfg: &l.cfg, sends: map[int]int{}, abort: l.abort}
		l.ws = append(l.ws, w)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			w.run(l.stop)
		}()
	}
	return l
}

// halt stops the workers after their current request and waits for them.
// It is safe to call more than once.
func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// drop stops the workers at once: a request not answered yet stays
// pending (it may or may not have been applied).
func (l *load) drop() {
	select {
	case <-l.abort:
	default:
		close(l.abort)
	}
	l.halt()
}

// id names one of the worker's requests; line is its INCR command.
func (w *worker) id(seq int) string       { return fmt.Sprintf("%s-w%d-%d", w.cfg.Run, w.n, seq) }
func (w *worker) key() string             { return w.cfg.Keys + strconv.Itoa(w.n) }
func (w *worker) line(seq int) string     { return fmt.Sprintf("INCR %s 1 %s\n", w.key(), w.id(seq)) }
func (w *worker) closeConn()              { w.conn.Close(); w.conn, w.rd = nil, nil }
func (w *worker) advance()                { w.next = (w.next + 1) % len(w.cfg.Addrs) }
func (w *worker) fail(seq int, err error) { w.mu.Lock(); w.pending, w.err = seq, err; w.mu.Unlock() }

func (w *worker) run(stop <-chan struct{}) {
	defer func() {
		if w.conn != nil {
			w.closeConn()
		}
	}()
	for seq := 1; ; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		begin := time.Now()
		if err := w.do(seq); err != nil {
			w.fail(seq, err)
			return
		}
		if rest := w.cfg.Pace - time.Since(begin); rest > 0 {
			time.Sleep(rest)
		}
	}
}

// do sends request seq until it is answered or GiveUp passes.
func (w *worker) do(seq int) error {
	giveUp := time.Now().Add(w.cfg.GiveUp)
	line := w.line(seq)
	var last error
	for time.Now().Before(giveUp) {
		if w.dropped() {
			return errDropped
		}
		if w.conn == nil {
			if err := w.connect(giveUp); err != nil {
				return fmt.Errorf("request %s: %w (last error: %v)", w.id(seq), err, last)
			}
		}
		addr := w.conn.RemoteAddr().String()
		sent := time.Now()
		_ = w.conn.SetDeadline(sent.Add(w.cfg.TryTimeout))
		if _, err := w.conn.Write([]byte(line)); err != nil {
			last = err
			w.closeConn()
			w.advance()
			continue
		}
		w.mu.Lock()
		w.sends[seq]++
		w.mu.Unlock()
		reply, err := w.rd.ReadString('\n')
		if err != nil {
			last = err
			w.closeConn()
			w.advance()
			continue
		}
		got := time.Now()
		v, err := strconv.ParseInt(strings.TrimSpace(reply), 10, 64)
		if err != nil {
			return fmt.Errorf("request %s answered %q by %s", w.id(seq), strings.TrimSpace(reply), addr)
		}
		w.mu.Lock()
		w.acks = append(w.acks, ack{ID: w.id(seq), Seq: seq, Value: v, Sent: sent, Got: got, Addr: addr})
		w.mu.Unlock()
		return nil
	}
	return fmt.Errorf("request %s: no answer within %s (last error: %v)", w.id(seq), w.cfg.GiveUp, last)
}

// connect tries every address in turn, from w.next, until one accepts.
func (w *worker) connect(giveUp time.Time) error {
	w.mu.Lock()
	w.reconnects++
	w.mu.Unlock()
	for time.Now().Before(giveUp) && !w.dropped() {
		for range w.cfg.Addrs {
			c, err := net.DialTimeout("tcp", w.cfg.Addrs[w.next], 300*time.Millisecond)
			if err == nil {
				w.conn, w.rd = c, bufio.NewReader(c)
				return nil
			}
			w.advance()
		}
		time.Sleep(10 * time.Millisecond) // every node refused: none serves yet
	}
	if w.dropped() {
		return errDropped
	}
	return errors.New("no node accepts connections")
}

// acked returns every acknowledged request of all workers, sorted by the
// time its answer arrived.
func (l *load) acked() []ack {
	var all []ack
	for _, w := range l.ws {
		w.mu.Lock()
		all = append(all, w.acks...)
		w.mu.Unlock()
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Got.Before(all[j].Got) })
	return all
}

// count is the number of acknowledged requests so far.
func (l *load) count() int {
	n := 0
	for _, w := range l.ws {
		w.mu.Lock()
		n += len(w.acks)
		w.mu.Unlock()
	}
	return n
}

// errs returns the workers' errors (a dropped request is none).
func (l *load) errs() []error {
	var out []error
	for _, w := range l.ws {
		w.mu.Lock()
		if w.err != nil && !errors.Is(w.err, errDropped) {
			out = append(out, fmt.Errorf("worker %d: %w", w.n, w.err))
		}
		w.mu.Unlock()
	}
	return out
}

// waitAcks waits until n more requests than before have been acknowledged
// (by any worker), or the load fails, or timeout passes.
func (l *load) waitAcks(n int, timeout time.Duration) error {
	want := l.count() + n
	deadline := time.Now().Add(timeout)
	for l.count() < want {
		if errs := l.errs(); len(errs) > 0 {
			return errors.Join(errs...)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d acknowledgements after %s", l.count()-want+n, n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// firstServedAfter is the first acknowledged request whose answered
// attempt was sent after t, by another address than not: the first request
// the cluster (another node) served after t.
func (l *load) firstServedAfter(t time.Time, not string) (ack, bool) {
	var best ack
	found := false
	for _, w := range l.ws {
		w.mu.Lock()
		for _, a := range w.acks {
			if a.Sent.After(t) && a.Addr != not && (!found || a.Got.Before(best.Got)) {
				best, found = a, true
			}
		}
		w.mu.Unlock()
	}
	return best, found
}

// verify compares what the workers saw with the app's applied ids (IDS):
// every acknowledged request is applied exactly once with the value it was
// acknowledged with, each worker's answers count 1, 2, 3, ..., nothing
// unacknowledged is applied (except a request a worker gave up on), and no
// id was delivered to the app more often than its client sent it (a
// delivery more means a message replayed twice, or replayed though the
// epoch already held it). It returns every discrepancy.
func (l *load) verify(ids []kvApplied) []string {
	var bad []string
	applied := map[string]kvApplied{}
	for _, a := range ids {
		if _, dup := applied[a.ID]; dup {
			bad = append(bad, fmt.Sprintf("id %s listed twice by the app", a.ID))
		}
		applied[a.ID] = a
	}
	mine := 0
	prefix := l.cfg.Run + "-w"
	for _, a := range ids {
		if strings.HasPrefix(a.ID, prefix) {
			mine++
		}
	}
	want := 0
	for _, w := range l.ws {
		w.mu.Lock()
		for i, a := range w.acks {
			id := w.id(a.Seq)
			if a.Seq != i+1 || a.Value != int64(a.Seq) {
				bad = append(bad, fmt.Sprintf("worker %d: answer %d is request %d with value %d (want request %d, value %d) from %s",
					w.n, i+1, a.Seq, a.Value, i+1, i+1, a.Addr))
			}
			got, ok := applied[id]
			switch {
			case !ok:
				bad = append(bad, fmt.Sprintf("acknowledged %s (value %d, from %s at %s) is not applied",
					id, a.Value, a.Addr, a.Got.Format("15:04:05.000")))
			case got.Value != a.Value:
				bad = append(bad, fmt.Sprintf("acknowledged %s with %d, applied with %d", id, a.Value, got.Value))
			}
			if ok && got.Dups > w.sends[a.Seq]-1 {
				bad = append(bad, fmt.Sprintf("%s delivered %d time(s), sent %d time(s)", id, got.Dups+1, w.sends[a.Seq]))
			}
		}
		want += len(w.acks)
		if w.pending > 0 {
			if _, ok := applied[w.id(w.pending)]; ok {
				want++
			}
		}
		// Nothing beyond the last request.
		last := len(w.acks)
		if w.pending > 0 {
			last = w.pending
		}
		if _, ok := applied[w.id(last+1)]; ok {
			bad = append(bad, fmt.Sprintf("%s was never sent but is applied", w.id(last+1)))
		}
		w.mu.Unlock()
	}
	if mine != want {
		bad = append(bad, fmt.Sprintf("the app applied %d request(s) of this load, %d were acknowledged (or pending and applied)", mine, want))
	}
	return bad
}

// sends is the total number of request writes, and how many requests
// were written more than once (retries).
func (l *load) sends() (writes, retried int) {
	for _, w := range l.ws {
		w.mu.Lock()
		for _, n := range w.sends {
			writes += n
			if n > 1 {
				retried++
			}
		}
		w.mu.Unlock()
	}
	return writes, retried
}
