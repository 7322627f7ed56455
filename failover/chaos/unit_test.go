package chaos

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"doppel/node/api"
)

// The tests in this file are fast: the reference app run directly, the
// load client against in-process relays, and the checks on synthetic
// events. They run under -short.

// TestKVApp: an id is applied once however often it is delivered, the
// data file agrees with memory, a restart reloads it, and a connection
// that ends inside a line is counted.
func TestKVApp(t *testing.T) {
	requireKVApp(t)
	dir := t.TempDir()
	addr := startKVAppIn(t, dir)
	for i, want := range []int64{5, 5, 7} {
		id := []string{"a", "a", "b"}[i]
		n := []int{5, 5, 2}[i]
		v, err := kvInt(addr, fmt.Sprintf("INCR k %d %s", n, id))
		if err != nil || v != want {
			t.Fatalf("INCR k %d %s: %d %v, want %d", n, id, v, err, want)
		}
	}
	if v, err := kvInt(addr, "GET k"); err != nil || v != 7 {
		t.Errorf("GET k: %d %v", v, err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "INCR k 1 c") // no newline: never applied
	c.Close()
	waitFor(t, 5*time.Second, "the partial line is counted", func() (bool, string) {
		st, err := kvGetStats(addr)
		return err == nil && st.Partial == 1, fmt.Sprintf("%+v %v", st, err)
	})
	st, err := kvGetStats(addr)
	if err != nil || st != (kvStats{Applied: 2, Dups: 1, Keys: 1, Partial: 1}) {
		t.Errorf("STATS: %+v %v", st, err)
	}
	ids, err := kvIDs(addr)
	if err != nil || len(ids) != 2 || ids[0] != (kvApplied{"a", 5, 1}) || ids[1] != (kvApplied{"b", 7, 0}) {
		t.Errorf("IDS: %+v %v", ids, err)
	}
	if err := kvCheck(addr); err != nil {
		t.Error(err)
	}
	if a, err := kvAsk(addr, "INCR k x y"); err != nil || !strings.HasPrefix(a, "ERR") {
		t.Errorf("a bad increment: %q %v", a, err)
	}

	// A second app on the same data directory starts from the file.
	again := startKVAppIn(t, dir)
	if v, err := kvInt(again, "INCR k 1 a"); err != nil || v != 5 {
		t.Errorf("after a restart, id a: %d %v, want its first value 5", v, err)
	}
	if err := kvCheck(again); err != nil {
		t.Error(err)
	}
}

// TestKVAppCheckFindsDoubleApplication: CHECK reports a data file that
// applies an id twice or whose values do not add up.
func TestKVAppCheckFindsDoubleApplication(t *testing.T) {
	requireKVApp(t)
	for name, content := range map[string]string{
		"twice":     "a k 1 1\nb k 1 2\na k 1 3\n",
		"wrong sum": "a k 1 1\nb k 1 5\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "data", "kv.log"), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			addr := startKVAppIn(t, dir)
			if err := kvCheck(addr); err == nil {
				t.Errorf("CHECK accepts %q", content)
			} else {
				t.Log(err)
			}
		})
	}
}

// startKVAppIn runs the app with data in dir/data.
func startKVAppIn(t *testing.T, dir string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(build.kvapp, "-listen", addr, "-data", filepath.Join(dir, "data"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitFor(t, 10*time.Second, "kvapp listens", func() (bool, string) {
		_, err := kvInt(addr, "GET x")
		return err == nil, fmt.Sprint(err)
	})
	return addr
}

// relay forwards connections to a target until closed; with loseEvery n,
// it drops the answer to every n-th request of a connection (the app has
// acted on it) and closes that connection, as a failing OP does.
type relay struct {
	ln        net.Listener
	target    string
	loseEvery int

	mu    sync.Mutex
	conns []net.Conn
	lost  int
}

func startRelay(t *testing.T, target string, loseEvery int) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, loseEvery: loseEvery}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(c)
		}
	}()
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) serve(c net.Conn) {
	defer c.Close()
	app, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer app.Close()
	r.mu.Lock()
	r.conns = append(r.conns, c, app)
	r.mu.Unlock()
	in, out := bufio.NewReader(c), bufio.NewReader(app)
	for n := 1; ; n++ {
		line, err := in.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := io.WriteString(app, line); err != nil {
			return
		}
		answer, err := out.ReadString('\n')
		if err != nil {
			return
		}
		if r.loseEvery > 0 && n%r.loseEvery == 0 {
			r.mu.Lock()
			r.lost++
			r.mu.Unlock()
			return
		}
		if _, err := io.WriteString(c, answer); err != nil {
			return
		}
	}
}

// close stops the relay and cuts its connections (a node that dies).
func (r *relay) close() {
	r.ln.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
}

// TestLoadRetriesAcrossNodes: workers whose node dies reconnect to the
// next address and retry with the same id; answers lost after the app
// applied a request are absorbed by the app; verify finds nothing wrong.
func TestLoadRetriesAcrossNodes(t *testing.T) {
	app := startKVApp(t)
	a := startRelay(t, app, 7) // loses an answer now and then
	b := startRelay(t, app, 0)
	l := startLoad(loadConfig{Addrs: []string{a.addr(), b.addr()}, Workers: 3, Run: "r" + randomHex(3), TryTimeout: time.Second, GiveUp: 10 * time.Second})
	defer l.drop()
	if err := l.waitAcks(100, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	a.close()
	if err := l.waitAcks(100, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	l.halt()
	if errs := l.errs(); len(errs) > 0 {
		t.Fatal(errs)
	}
	first, ok := l.firstServedAfter(cut, "")
	if !ok || first.Addr != b.addr() {
		t.Errorf("first answer after the cut: %+v %v, want one from %s", first, ok, b.addr())
	}
	ids, err := kvIDs(app)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range l.verify(ids) {
		t.Error(p)
	}
	writes, retried := l.sends()
	st, err := kvGetStats(app)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	lost := a.lost
	a.mu.Unlock()
	if retried == 0 || st.Dups == 0 || lost == 0 {
		t.Errorf("%d writes, %d retried, %d answers lost, %d repeated deliveries: the retry path did not run", writes, retried, lost, st.Dups)
	}
}

// TestVerifyFindsLossAndDoubles: verify reports an acknowledged request the
// app does not hold, a value that is not the request number, an id
// delivered more often than sent, an applied request never sent, and a
// count of applied requests that is not the count acknowledged.
func TestVerifyFindsLossAndDoubles(t *testing.T) {
	l := &load{cfg: loadConfig{Run: "v", Keys: "k"}}
	w := &worker{n: 0, cfg: &l.cfg, sends: map[int]int{1: 1, 2: 1, 3: 2}}
	w.acks = []ack{{Seq: 1, Value: 1}, {Seq: 2, Value: 2}, {Seq: 3, Value: 4}}
	l.ws = []*worker{w}
	ids := []kvApplied{{"v-w0-1", 1, 1}, {"v-w0-3", 4, 0}, {"v-w0-4", 5, 0}}
	got := strings.Join(l.verify(ids), "\n")
	for _, want := range []string{
		"answer 3 is request 3 with value 4",
		"acknowledged v-w0-2",
		"v-w0-1 delivered 2 time(s), sent 1",
		"v-w0-4 was never sent but is applied",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("verify does not report %q; it reports:\n%s", want, got)
		}
	}
	if p := l.verify(ids[:2]); !strings.Contains(strings.Join(p, "\n"), "the app applied 2 request(s) of this load, 3 were acknowledged") {
		t.Errorf("verify does not count the requests: %v", p)
	}
	// A clean history passes.
	w.acks[2].Value = 3
	clean := []kvApplied{{"v-w0-1", 1, 0}, {"v-w0-2", 2, 0}, {"v-w0-3", 3, 1}}
	if p := l.verify(clean); len(p) != 0 {
		t.Errorf("a clean history: %v", p)
	}
}

func at(sec float64) time.Time {
	return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(sec * float64(time.Second)))
}

func appEv(node string, sec float64, kind, msg string) nodeEvent {
	return nodeEvent{Node: node, Stream: node, Event: api.Event{Time: at(sec), Kind: kind, App: "kv", Node: node, Message: msg}}
}

// TestServingIntervals: opens, ends (stop, fence, kill) and promotions
// make per-node intervals; overlaps are found, except while a node was
// stopped.
func TestServingIntervals(t *testing.T) {
	evs := []nodeEvent{
		appEv("n1", 1, api.KindApp, "service of kv open on 10.0.0.11:7000 (journal sync from 5)"),
		{Node: "n2", Event: api.Event{Time: at(10), Kind: api.KindPromotion, App: "kv", Node: "n2", Message: "n2 promoted to OP of kv at term 2: x"}},
		appEv("n2", 11, api.KindApp, "service of kv open on 10.0.0.12:7000 (journal sync from 9)"),
		appEv("n1", 12, api.KindApp, "kv stopped on n1"),
		{Node: "n3", Event: api.Event{Time: at(20), Kind: api.KindPromotion, App: "kv", Node: "n3", Message: "n3 promoted to OP of kv at term 3: x"}},
		appEv("n3", 21, api.KindApp, "service of kv open on 10.0.0.13:7000 (journal sync from 9)"),
	}
	faults := []fault{{Node: "n1", At: at(5), To: at(11.5)}, {Node: "n2", At: at(20.5), Kill: true}}
	iv := servingIntervals("kv", evs, faults, at(30))
	if len(iv) != 3 {
		t.Fatalf("intervals %+v", iv)
	}
	want := []serving{
		{Node: "n1", Term: 0, Open: at(1), Close: at(12), Why: "kv stopped on n1"},
		{Node: "n2", Term: 2, Open: at(11), Close: at(20.5), Why: "killed"},
		{Node: "n3", Term: 3, Open: at(21), Close: at(30), Still: true},
	}
	for i := range want {
		if iv[i] != want[i] {
			t.Errorf("interval %d: %+v, want %+v", i, iv[i], want[i])
		}
	}
	ov := overlaps(iv, faults)
	if from := at(11.5).Add(resumeGrace); len(ov) != 1 || !ov[0].From.Equal(from) || !ov[0].To.Equal(at(12)) {
		t.Errorf("overlaps %v, want n1 and n2 from %s to 12 s (n1 stopped before, plus the grace after its resume)", ov, from.Format("05.000"))
	}
	// Without the stop, the whole second counts.
	if ov := overlaps(iv, faults[1:]); len(ov) != 1 || ov[0].To.Sub(ov[0].From) != time.Second {
		t.Errorf("overlaps without the stop: %v", ov)
	}
}

// TestStaleAnswers: an answer from a node, to a request sent after
// another node opened the service at a higher term, is reported, also
// when the deposed node reopens its service later.
func TestStaleAnswers(t *testing.T) {
	c := &cluster{nodes: []*daemon{{Name: "n1", IP: "10.0.0.11"}, {Name: "n2", IP: "10.0.0.12"}}}
	s := &kvService{c: c, Name: "kv", Port: 7000}
	evs := []nodeEvent{
		appEv("n1", 1, api.KindApp, "service of kv open on 10.0.0.11:7000"),
		{Node: "n3", Event: api.Event{Time: at(9), Kind: api.KindPromotion, App: "kv", Node: "n2", Message: "n2 promoted to OP of kv at term 2: x"}},
		appEv("n2", 10, api.KindApp, "service of kv open on 10.0.0.12:7000"),
		appEv("n1", 11.5, api.KindError, "kv fenced on n1: no contact"),
		appEv("n1", 12, api.KindApp, "service of kv open on 10.0.0.11:7000"), // reopened at its old term
	}
	acks := []ack{
		{ID: "a", Sent: at(2), Got: at(2.1), Addr: "10.0.0.11:7000"},
		{ID: "b", Sent: at(9.9), Got: at(10.2), Addr: "10.0.0.11:7000"}, // sent before n2 opened
		{ID: "c", Sent: at(10.5), Got: at(10.6), Addr: "10.0.0.12:7000"},
		{ID: "d", Sent: at(11), Got: at(11.1), Addr: "10.0.0.11:7000"},   // deposed
		{ID: "e", Sent: at(12.5), Got: at(12.6), Addr: "10.0.0.12:7000"}, // the OP
		{ID: "f", Sent: at(12.5), Got: at(12.7), Addr: "10.0.0.11:7000"}, // deposed, reopened
	}
	bad := strings.Join(staleAnswers(s, acks, evs, nil), "\n")
	for _, id := range []string{"a", "b", "c", "e"} {
		if strings.Contains(bad, "request "+id+" ") {
			t.Errorf("request %s reported: %s", id, bad)
		}
	}
	for _, id := range []string{"d", "f"} {
		if !strings.Contains(bad, "request "+id+" ") {
			t.Errorf("request %s not reported: %s", id, bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 20; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	if p := percentile(ds, 50); p != 10*time.Second {
		t.Errorf("median %s", p)
	}
	if p := percentile(ds, 95); p != 19*time.Second {
		t.Errorf("p95 %s", p)
	}
	if p := percentile(ds, 100); p != 20*time.Second {
		t.Errorf("max %s", p)
	}
	if p := percentile(nil, 50); p != 0 {
		t.Errorf("empty %s", p)
	}
}

// TestStaleAnswersAfterKills: a node killed and later promoted again
// serves at its new term; the node it replaced no longer may.
func TestStaleAnswersAfterKills(t *testing.T) {
	c := &cluster{nodes: []*daemon{{Name: "n1", IP: "10.0.0.11"}, {Name: "n2", IP: "10.0.0.12"}}}
	s := &kvService{c: c, Name: "kv", Port: 7000}
	promote := func(node string, sec float64, term int) nodeEvent {
		return nodeEvent{Node: "n3", Event: api.Event{Time: at(sec), Kind: api.KindPromotion, App: "kv", Node: node,
			Message: fmt.Sprintf("%s promoted to OP of kv at term %d: x", node, term)}}
	}
	evs := []nodeEvent{
		appEv("n1", 1, api.KindApp, "service of kv open on 10.0.0.11:7000"),
		promote("n2", 3.5, 2),
		appEv("n2", 4, api.KindApp, "service of kv open on 10.0.0.12:7000"),
		promote("n1", 6.5, 3),
		appEv("n1", 7, api.KindApp, "service of kv open on 10.0.0.11:7000"),
	}
	faults := []fault{{Node: "n1", At: at(3), Kill: true}}
	acks := []ack{
		{ID: "a", Sent: at(8), Got: at(8.1), Addr: "10.0.0.11:7000"},
		{ID: "b", Sent: at(8), Got: at(8.1), Addr: "10.0.0.12:7000"},
	}
	bad := staleAnswers(s, acks, evs, faults)
	if len(bad) != 1 || !strings.Contains(bad[0], "request b ") {
		t.Errorf("stale answers %v, want request b only", bad)
	}
}
