package chaos

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"doppel/node/api"
)

// nodeEvent is an event of the cluster as the test recorded it. Node is
// the node that published it; Stream and Run name the node (and which of
// its processes) whose API stream carried it first: every node streams the
// whole cluster's live events. The event's own Node field (ev.Event.Node)
// names its subject, e.g. the promoted node of a promotion.
type nodeEvent struct {
	Node   string
	Stream string
	Run    int
	api.Event
}

// recorder follows the event streams of every node process of a cluster.
type recorder struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	events []nodeEvent
	seen   map[string]bool
}

func newRecorder() *recorder {
	ctx, cancel := context.WithCancel(context.Background())
	return &recorder{ctx: ctx, cancel: cancel, seen: map[string]bool{}}
}

// follow records the events of process run of d, from its start (the
// daemon replays its recent events to a new subscriber) until it exits.
func (r *recorder) follow(d *daemon, run int) {
	p := d.current()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for r.ctx.Err() == nil {
			select {
			case <-p.exited:
				return
			default:
			}
			w, err := d.Client.Events(r.ctx)
			if err != nil {
				time.Sleep(20 * time.Millisecond) // the API is not up yet
				continue
			}
			stop := context.AfterFunc(r.ctx, func() { w.Close() })
			go func() {
				// A killed daemon may leave the stream hanging.
				select {
				case <-p.exited:
					w.Close()
				case <-r.ctx.Done():
				}
			}()
			for {
				ev, err := w.Next()
				if err != nil {
					break
				}
				r.add(nodeEvent{Node: publisher(d.Name, ev), Stream: d.Name, Run: run, Event: ev})
			}
			stop()
			w.Close()
			// One stream per process: a reconnection could reach the
			// node's next process, whose events are that run's.
			return
		}
	}()
}

// publisher is the node that published ev, streamed by node stream: the
// event's Node, except on promotions, where it names the promoted node.
func publisher(stream string, ev api.Event) string {
	if ev.Node == "" || ev.Kind == api.KindPromotion || ev.Kind == api.KindMember || ev.Kind == api.KindAck {
		return stream
	}
	return ev.Node
}

// add records ev once, however many nodes streamed it.
func (r *recorder) add(ev nodeEvent) {
	key := fmt.Sprintf("%s/%s/%d/%s/%s/%d", ev.Event.Node, ev.Kind, ev.Time.UnixNano(), ev.App, ev.Message, ev.Epoch)
	if ev.Kind == api.KindMember {
		// Each node reports its own view of the membership.
		key = ev.Stream + "/" + key
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[key] {
		return
	}
	r.seen[key] = true
	r.events = append(r.events, ev)
}

// all returns the events recorded so far, in the order of their time.
func (r *recorder) all() []nodeEvent {
	r.mu.Lock()
	out := append([]nodeEvent(nil), r.events...)
	r.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

// find returns the first recorded event (in time order) at or after t
// that matches.
func (r *recorder) find(t time.Time, match func(nodeEvent) bool) (nodeEvent, bool) {
	for _, ev := range r.all() {
		if !ev.Time.Before(t) && match(ev) {
			return ev, true
		}
	}
	return nodeEvent{}, false
}

func (r *recorder) close() {
	r.cancel()
	r.wg.Wait()
}

// Messages the daemon publishes about an app's service (package node).
func isServiceOpen(app string, ev nodeEvent) bool {
	return ev.Kind == api.KindApp && strings.HasPrefix(ev.Message, "service of "+app+" open on ")
}

// isServiceEnd says whether ev ends the service of app on the node that
// published it: the app stopped or killed there, fenced, or exited.
func isServiceEnd(app string, ev nodeEvent) bool {
	m := ev.Message
	switch ev.Kind {
	case api.KindApp:
		return m == app+" stopped on "+ev.Node ||
			strings.HasPrefix(m, app+" exited on ") ||
			strings.HasPrefix(m, "local copy of "+app+" stopped")
	case api.KindError:
		return strings.HasPrefix(m, app+" fenced on ")
	}
	return false
}

var termRE = regexp.MustCompile(`at term (\d+)`)

// promotionTerm returns the term a promotion event of app announces.
func promotionTerm(app string, ev nodeEvent) (uint64, bool) {
	if ev.Kind != api.KindPromotion || ev.App != app {
		return 0, false
	}
	m := termRE.FindStringSubmatch(ev.Message)
	if m == nil {
		return 0, false
	}
	t, err := strconv.ParseUint(m[1], 10, 64)
	return t, err == nil
}

// serving is a time during which a node had the app's service open.
type serving struct {
	Node        string
	Term        uint64 // the newest term promoting Node before Open; 0: none seen
	Open, Close time.Time
	Still       bool   // still open at the end of the record
	Why         string // what closed it
}

// servingIntervals rebuilds, from the recorded events and the injected
// faults, when each node had the app's service open. A kill closes the
// node's service at the moment of the kill; a process restart never
// reopens it by itself (an open needs its own event).
func servingIntervals(app string, evs []nodeEvent, faults []fault, end time.Time) []serving {
	type mark struct {
		at    time.Time
		node  string
		open  bool
		why   string
		order int
	}
	var marks []mark
	terms := map[string][]struct {
		at   time.Time
		term uint64
	}{}
	for i, ev := range evs {
		switch {
		case isServiceOpen(app, ev):
			marks = append(marks, mark{ev.Time, ev.Node, true, "", i})
		case isServiceEnd(app, ev):
			marks = append(marks, mark{ev.Time, ev.Node, false, ev.Message, i})
		}
		if term, ok := promotionTerm(app, ev); ok {
			terms[ev.Event.Node] = append(terms[ev.Event.Node], struct {
				at   time.Time
				term uint64
			}{ev.Time, term})
		}
	}
	for i, f := range faults {
		if f.Kill {
			marks = append(marks, mark{f.At, f.Node, false, "killed", len(evs) + i})
		}
	}
	sort.SliceStable(marks, func(i, j int) bool {
		if !marks[i].at.Equal(marks[j].at) {
			return marks[i].at.Before(marks[j].at)
		}
		return marks[i].order < marks[j].order
	})
	open := map[string]*serving{}
	var out []serving
	for _, m := range marks {
		cur := open[m.node]
		if m.open && cur != nil {
			// Reopened without a recorded end (a restart by policy, an
			// unfence): a new interval, at the node's newest term.
			cur.Close, cur.Why = m.at, "reopened"
			out = append(out, *cur)
			delete(open, m.node)
			cur = nil
		}
		switch {
		case m.open:
			s := &serving{Node: m.node, Open: m.at}
			for _, t := range terms[m.node] {
				if !t.at.After(m.at) {
					s.Term = t.term
				}
			}
			open[m.node] = s
		case cur != nil:
			cur.Close, cur.Why = m.at, m.why
			out = append(out, *cur)
			delete(open, m.node)
		}
	}
	for _, s := range open {
		s.Close, s.Still = end, true
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Open.Before(out[j].Open) })
	return out
}

// overlap is a time when two nodes had the app's service open and
// neither was stopped (SIGSTOP).
type overlap struct {
	A, B     serving
	From, To time.Time
}

func (o overlap) String() string {
	return fmt.Sprintf("%s (term %d, open %s) and %s (term %d, open %s) both serving for %s from %s",
		o.A.Node, o.A.Term, o.A.Open.Format("15:04:05.000"), o.B.Node, o.B.Term, o.B.Open.Format("15:04:05.000"),
		o.To.Sub(o.From).Round(time.Millisecond), o.From.Format("15:04:05.000"))
}

// overlaps returns the times two nodes served at once, not counting the
// times one of them was stopped.
func overlaps(iv []serving, faults []fault) []overlap {
	var out []overlap
	for i := range iv {
		for j := i + 1; j < len(iv); j++ {
			a, b := iv[i], iv[j]
			if a.Node == b.Node {
				continue
			}
			from, to := later(a.Open, b.Open), earlier(a.Close, b.Close)
			if !from.Before(to) {
				continue
			}
			for _, seg := range subtractStops(from, to, faults, a.Node, b.Node) {
				out = append(out, overlap{A: a, B: b, From: seg[0], To: seg[1]})
			}
		}
	}
	return out
}

// resumeGrace is how long a daemon resumed after a SIGSTOP may take to
// publish that its lease ran out. Its proxy forwards nothing once the lease
// has run out (the partition test checks that a request sent to it is
// never applied), so during the grace its open listener serves no one.
const resumeGrace = 250 * time.Millisecond

// subtractStops removes from [from, to) the SIGSTOP windows of the nodes,
// each extended by resumeGrace.
func subtractStops(from, to time.Time, faults []fault, nodes ...string) [][2]time.Time {
	segs := [][2]time.Time{{from, to}}
	for _, f := range faults {
		if f.Kill {
			continue
		}
		mine := false
		for _, n := range nodes {
			mine = mine || f.Node == n
		}
		if !mine {
			continue
		}
		f.To = f.To.Add(resumeGrace)
		var next [][2]time.Time
		for _, s := range segs {
			if !f.At.Before(s[1]) || !f.To.After(s[0]) {
				next = append(next, s)
				continue
			}
			if s[0].Before(f.At) {
				next = append(next, [2]time.Time{s[0], f.At})
			}
			if f.To.Before(s[1]) {
				next = append(next, [2]time.Time{f.To, s[1]})
			}
		}
		segs = next
	}
	return segs
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
