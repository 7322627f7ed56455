package introspect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ChangeOp says what happened to a node or an edge.
type ChangeOp string

// Change operations.
const (
	OpAdded   ChangeOp = "added"
	OpRemoved ChangeOp = "removed"
	OpChanged ChangeOp = "changed"
)

// Change is one node or edge that appeared, disappeared or changed.
// Exactly one of Node and Edge is set. For OpRemoved it is the last known
// value.
type Change struct {
	Op   ChangeOp `json:"op"`
	Node *Node    `json:"node,omitempty"`
	Edge *Edge    `json:"edge,omitempty"`
}

// Update is what one scan of a Watcher found changed since the previous
// one. The first Update of a Watcher adds every node and edge.
type Update struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Changes []Change  `json:"changes"`
	// Graph is the graph after the changes, nil in the last Update after
	// the root exited. It is shared: do not modify.
	Graph *Graph `json:"-"`
}

// ErrWatcherClosed is returned by Next after Close.
var ErrWatcherClosed = errors.New("introspect: watcher closed")

// Watcher follows a process tree and reports changes to its graph. It
// subscribes to the kernel's process events (fork, exec, exit) when
// Config.UseProcConnector is set and it runs as root; it always re-scans
// every Config.ScanInterval for descriptors and sockets, and probes the
// process membership every half interval. With the process connector every
// process forked in the tree is reported, even one that exits before it
// could be scanned (it then appears and disappears in the same Update);
// without it, every process that lives at least half an interval is.
//
// Next and Close may be called from different goroutines; Next itself is
// meant for one consumer.
type Watcher struct {
	root int
	cfg  Config
	sc   *Scanner
	log  *slog.Logger

	updates chan Update
	cancel  context.CancelFunc
	done    chan struct{}
	conn    *procConnector

	mu     sync.Mutex
	latest *Graph
	err    error
	closed bool
}

// NewWatcher scans the tree rooted at root once (that first scan's error,
// such as ErrNoProcess, is returned) and starts following it until ctx ends
// or Close is called.
func NewWatcher(ctx context.Context, root int, cfg Config) (*Watcher, error) {
	sc := NewScanner(cfg)
	g, err := sc.Scan(ctx, root)
	if err != nil {
		sc.Close()
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &Watcher{
		root:    root,
		cfg:     sc.cfg,
		sc:      sc,
		log:     slog.Default().With("pid", root),
		updates: make(chan Update, 16),
		cancel:  cancel,
		done:    make(chan struct{}),
		latest:  g,
	}
	if w.cfg.UseProcConnector {
		if conn, err := openProcConnector(); err == nil {
			w.conn = conn
		} else {
			w.log.Debug("process connector unavailable, polling only", "err", err)
		}
	}
	first := Update{Seq: 1, Time: g.Time, Changes: Diff(nil, g), Graph: g}
	w.updates <- first
	go w.run(wctx, g)
	return w, nil
}

// UsesProcConnector reports whether kernel process events drive the
// Watcher (else it polls).
func (w *Watcher) UsesProcConnector() bool { return w.conn != nil }

// Graph returns the newest graph.
func (w *Watcher) Graph() *Graph {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}

// Next blocks until the next Update. When the root process exits, the
// Update that removes the tree is delivered, then Next returns an error
// wrapping ErrNoProcess; after Close it returns ErrWatcherClosed.
func (w *Watcher) Next(ctx context.Context) (Update, error) {
	select {
	case u, ok := <-w.updates:
		if !ok {
			w.mu.Lock()
			defer w.mu.Unlock()
			return Update{}, w.err
		}
		return u, nil
	case <-ctx.Done():
		return Update{}, ctx.Err()
	}
}

// Close stops the Watcher and waits for its goroutines to end.
func (w *Watcher) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cancel()
	<-w.done
	return nil
}

// born is a process the connector saw forked in the tree.
type born struct {
	ppid int
	at   time.Time
}

func (w *Watcher) run(ctx context.Context, prev *Graph) {
	defer close(w.done)
	defer w.sc.Close()
	var finalErr error
	defer func() {
		w.mu.Lock()
		if w.closed || finalErr == nil {
			finalErr = ErrWatcherClosed
		}
		w.err = finalErr
		w.mu.Unlock()
		close(w.updates)
	}()

	events := make(chan []procEvent, 64)
	var readerDone chan struct{}
	if w.conn != nil {
		readerDone = make(chan struct{})
		go w.readEvents(ctx, events, readerDone)
		defer func() {
			_ = w.conn.Close()
			<-readerDone
		}()
	}

	members := pidSet(prev)
	births := map[int]born{}
	seq := uint64(1)
	lastFull := time.Now()
	probe := time.NewTicker(w.cfg.ScanInterval / 2)
	defer probe.Stop()
	debounce := w.cfg.ScanInterval / 10
	if debounce > 50*time.Millisecond {
		debounce = 50 * time.Millisecond
	}
	var soon <-chan time.Time

	emit := func(u Update) bool {
		select {
		case w.updates <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	full := func() bool {
		lastFull = time.Now()
		soon = nil
		g, err := w.sc.Scan(ctx, w.root)
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			if errors.Is(err, ErrNoProcess) {
				seq++
				changes := Diff(prev, nil)
				changes = append(changes, shortLived(births, prev, nil)...)
				emit(Update{Seq: seq, Time: time.Now(), Changes: changes, Graph: nil})
				finalErr = fmt.Errorf("watch pid %d: root exited: %w", w.root, err)
				return false
			}
			w.log.Warn("scan failed", "err", err)
			return true
		}
		changes := Diff(prev, g)
		changes = append(changes, shortLived(births, prev, g)...)
		prev = g
		members = pidSet(g)
		w.mu.Lock()
		w.latest = g
		w.mu.Unlock()
		if len(changes) == 0 {
			return true
		}
		seq++
		return emit(Update{Seq: seq, Time: g.Time, Changes: changes, Graph: g})
	}

	for {
		select {
		case <-ctx.Done():
			return
		case evs := <-events:
			dirty := evs == nil // nil means events were lost
			for _, e := range evs {
				switch e.What {
				case procEventFork:
					if e.PID == e.TGID && members[e.PTGID] {
						members[e.PID] = true
						births[e.PID] = born{ppid: e.PTGID, at: time.Now()}
						dirty = true
					} else if e.PID != e.TGID && members[e.TGID] {
						dirty = true // new thread
					}
				case procEventExec:
					dirty = dirty || members[e.TGID]
				case procEventExit:
					dirty = dirty || (e.PID == e.TGID && members[e.PID])
				}
			}
			if dirty && soon == nil {
				soon = time.After(debounce)
			}
		case <-soon:
			if !full() {
				return
			}
		case <-probe.C:
			if time.Since(lastFull) >= w.cfg.ScanInterval-w.cfg.ScanInterval/10 {
				if !full() {
					return
				}
				continue
			}
			pids, err := w.sc.treePIDs(w.root)
			if err != nil || !sameSet(pids, members) {
				if !full() {
					return
				}
			}
		}
	}
}

// readEvents forwards connector events until the connector is closed.
func (w *Watcher) readEvents(ctx context.Context, out chan<- []procEvent, done chan<- struct{}) {
	defer close(done)
	var buf []procEvent
	for {
		evs, err := w.conn.Read(buf[:0])
		if err != nil && !errors.Is(err, errEventsLost) {
			if ctx.Err() == nil && !errors.Is(err, os.ErrClosed) {
				w.log.Warn("process connector read failed", "err", err)
			}
			return
		}
		var batch []procEvent
		if err == nil {
			if len(evs) == 0 {
				continue
			}
			batch = append([]procEvent(nil), evs...)
		}
		select {
		case out <- batch: // nil batch: events lost, re-scan
		case <-ctx.Done():
			return
		}
		buf = evs
	}
}

// shortLived reports processes the connector saw forked in the tree that
// no scan caught: they are added and removed in the same Update. Births
// seen by a scan, or older than a minute, are forgotten.
func shortLived(births map[int]born, prev, next *Graph) []Change {
	var out []Change
	for pid, b := range births {
		id := ProcessID(pid)
		inPrev := prev != nil && prev.Node(id) != nil
		inNext := next != nil && next.Node(id) != nil
		switch {
		case inNext || inPrev:
			delete(births, pid)
		case next == nil || time.Since(b.at) > time.Minute || !pidAlive(pid):
			n := &Node{ID: id, Kind: KindProcess, Label: strconv.Itoa(pid) + " (exited)", Verdict: Verdict{Level: LevelOK},
				Process: &Process{PID: pid, PPID: b.ppid, State: "X"}}
			out = append(out, Change{Op: OpAdded, Node: n}, Change{Op: OpRemoved, Node: n})
			delete(births, pid)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Node.Process.PID < out[j].Node.Process.PID })
	return out
}

func pidAlive(pid int) bool {
	return unix.Kill(pid, 0) != unix.ESRCH
}

func pidSet(g *Graph) map[int]bool {
	m := map[int]bool{}
	if g == nil {
		return m
	}
	for _, n := range g.Nodes {
		if n.Kind == KindProcess {
			m[n.Process.PID] = true
		}
	}
	return m
}

func sameSet(pids []int, set map[int]bool) bool {
	if len(pids) != len(set) {
		return false
	}
	for _, p := range pids {
		if !set[p] {
			return false
		}
	}
	return true
}

// treePIDs walks the tree through /proc/PID/task/TID/children only: the
// cheap membership probe of the Watcher.
func (sc *Scanner) treePIDs(root int) ([]int, error) {
	out := []int{root}
	seen := map[int]bool{root: true}
	for i := 0; i < len(out); i++ {
		pid := out[i]
		dir := sc.cfg.ProcRoot + "/" + strconv.Itoa(pid) + "/task"
		tfd, err := openat(unix.AT_FDCWD, dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
		if err != nil {
			if i == 0 {
				return nil, err
			}
			continue
		}
		var tids []int
		_ = sc.r.readDirNames(tfd, func(name []byte) {
			if n, ok := atoiBytes(name); ok {
				tids = append(tids, n)
			}
		})
		for _, tid := range tids {
			b, err := sc.r.readChildrenAt(tfd, strconv.Itoa(tid)+"/children")
			if err != nil {
				continue
			}
			parseChildren(b, func(c int) {
				if !seen[c] {
					seen[c] = true
					out = append(out, c)
				}
			})
		}
		unix.Close(tfd)
	}
	return out, nil
}

// Diff returns the changes that turn old into new: nodes and edges added,
// removed, or changed. A nil graph is empty. A node counts as changed when
// something other than its counters changed (CPU time, memory sizes, queue
// lengths, offsets and fdinfo values are counters; a thread, a descriptor,
// a shared mapping, a state or a verdict are not).
func Diff(old, new *Graph) []Change {
	var out []Change
	oldN := map[string]*Node{}
	if old != nil {
		for i := range old.Nodes {
			oldN[old.Nodes[i].ID] = old.Nodes[i]
		}
	}
	newN := map[string]bool{}
	if new != nil {
		for i := range new.Nodes {
			n := new.Nodes[i]
			newN[n.ID] = true
			o := oldN[n.ID]
			switch {
			case o == nil:
				out = append(out, Change{Op: OpAdded, Node: n})
			case !bytes.Equal(fingerprint(o), fingerprint(n)):
				out = append(out, Change{Op: OpChanged, Node: n})
			}
		}
	}
	if old != nil {
		for i := range old.Nodes {
			if !newN[old.Nodes[i].ID] {
				out = append(out, Change{Op: OpRemoved, Node: old.Nodes[i]})
			}
		}
	}
	oldE := map[string]*Edge{}
	if old != nil {
		for i := range old.Edges {
			oldE[old.Edges[i].Key()] = &old.Edges[i]
		}
	}
	newE := map[string]bool{}
	if new != nil {
		for i := range new.Edges {
			e := &new.Edges[i]
			k := e.Key()
			newE[k] = true
			o := oldE[k]
			switch {
			case o == nil:
				out = append(out, Change{Op: OpAdded, Edge: e})
			case o.Reason != e.Reason:
				out = append(out, Change{Op: OpChanged, Edge: e})
			}
		}
	}
	if old != nil {
		for i := range old.Edges {
			if !newE[old.Edges[i].Key()] {
				out = append(out, Change{Op: OpRemoved, Edge: &old.Edges[i]})
			}
		}
	}
	return out
}

// fingerprint encodes the parts of a node that are not counters.
func fingerprint(n *Node) []byte {
	v := *n
	v.Info = nil
	if n.Process != nil {
		p := *n.Process
		p.CPUTime, p.RSS, p.PSS, p.State, p.MapSummary = 0, 0, 0, "", nil
		p.Threads = make([]Thread, len(n.Process.Threads))
		for i, t := range n.Process.Threads {
			p.Threads[i] = Thread{TID: t.TID, Comm: t.Comm}
		}
		p.Mappings = nil
		for _, m := range n.Process.Mappings {
			switch m.Kind {
			case MapAnonPrivate, MapHeap, MapStack, MapVDSO, MapVVAR, MapVsyscall:
				continue // come and go with the allocator
			}
			p.Mappings = append(p.Mappings, Mapping{Kind: m.Kind, Path: m.Path, Perms: m.Perms, Resource: m.Resource})
		}
		v.Process = &p
	}
	if n.File != nil {
		f := *n.File
		f.Size = 0
		v.File = &f
	}
	if n.Socket != nil {
		s := *n.Socket
		s.RecvQueue, s.SendQueue = 0, 0
		v.Socket = &s
	}
	if n.IPC != nil {
		c := *n.IPC
		c.LPID, c.LRPID, c.Messages, c.Bytes = 0, 0, 0, 0
		v.IPC = &c
	}
	if len(n.Holders) > 0 {
		v.Holders = make([]Holder, len(n.Holders))
		for i, h := range n.Holders {
			h.Pos = 0
			v.Holders[i] = h
		}
	}
	b, _ := json.Marshal(&v)
	return b
}
