package introspect

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoProcess is wrapped by Scan's error when the root process does not
// exist (or exited before it could be read).
var ErrNoProcess = errors.New("introspect: no such process")

// verdictNS are the namespaces the scan itself uses: for SysV IPC, the
// stat cache, sockets and the PID namespace checks.
var verdictNS = map[string]bool{"ipc": true, "mnt": true, "net": true, "pid": true}

// nsNames are the namespaces recorded for each process.
var nsNames = [...]string{"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"}

// fixedNS marks the namespaces a process keeps for life: setns and
// unshare of a PID or time namespace only apply to the children it
// creates afterwards. A Scanner reads them once per kept process.
var fixedNS = [len(nsNames)]bool{4: true, 5: true}

// Scanner builds resource graphs. It keeps its read buffers, and the procfs
// files of the processes it read, between scans, so a caller that scans
// repeatedly (the checkpoint engine, a Watcher) pays less per scan; Close
// releases the files. A Scanner is not safe for concurrent use.
type Scanner struct {
	cfg   Config
	r     *procReader
	self  map[string]uint64 // namespaces of the scanning process
	names []string          // decimal names of descriptor numbers
	// nsPaths are "ns/NAME" for each of nsNames, built once.
	nsPaths []string
	// strs interns the strings that repeat across mappings and scans.
	strs      map[string]string
	dbuf      []byte             // sock_diag receive buffer
	devs      map[uint64]string  // devString results
	lastNodes int                // nodes of the last scan, to size the next one
	last      scanSizes          // the last scan's table sizes, to size the next one
	pfs       map[int]*procFiles // procfs files kept open between scans
	gen       uint64             // scan generation, for sweeping pfs
	procFD    int                // ProcRoot, kept open
	kept      map[int]bool       // the descriptors of pfs, built when needed
	// lastThreads is the number of threads the last scan found; it picks
	// the cheaper way to discover the next tree.
	lastThreads int
	// recs are the descriptors the BPF iterator read (see fditer.go);
	// iterErr says why it cannot be used.
	recs     *fdRecs
	iterErr  error
	lastPIDs []int // the processes of the last scan, which the iterator reads
	lastFDs  int   // the descriptors of the last scan
	fileNr   int   // /proc/sys/fs/file-nr, kept open
	// lastSource is FDSource of the last scan; forceIter uses the
	// iterator whether it pays or not (tests).
	lastSource string
	forceIter  bool
}

// intern returns b as a string, shared with earlier equal strings. The
// table is bounded: past maxInterned entries it starts over.
func (sc *Scanner) intern(b []byte) string {
	if s, ok := sc.strs[string(b)]; ok {
		return s
	}
	const maxInterned = 1 << 14
	if sc.strs == nil || len(sc.strs) >= maxInterned {
		sc.strs = make(map[string]string, 256)
	}
	s := string(b)
	sc.strs[s] = s
	return s
}

// NewScanner returns a Scanner for cfg (zero fields take their defaults).
func NewScanner(cfg Config) *Scanner {
	cfg = cfg.normalized()
	sc := &Scanner{cfg: cfg, r: newProcReader(), self: map[string]uint64{}}
	for _, ns := range nsNames {
		sc.nsPaths = append(sc.nsPaths, "ns/"+ns)
	}
	for _, ns := range []string{"ipc", "net", "pid"} {
		if l, err := sc.r.readlinkAt(unix.AT_FDCWD, "/proc/self/ns/"+ns); err == nil {
			sc.self[ns] = nsInode(l)
		}
	}
	return sc
}

// Config returns the configuration the Scanner uses.
func (sc *Scanner) Config() Config { return sc.cfg }

// Scan reads the tree rooted at the process root (a host PID) and returns
// its graph. Scanning a frozen tree gives a consistent graph; scanning a
// running one gives the state at about the time of the call, and processes
// that exit meanwhile are recorded in Graph.Problems with Partial set.
// The error wraps ErrNoProcess when root does not exist; every other
// failure to read something is a Problem, not an error.
func Scan(ctx context.Context, root int, cfg Config) (*Graph, error) {
	sc := NewScanner(cfg)
	defer sc.Close()
	return sc.Scan(ctx, root)
}

// Scan is the package-level Scan using the Scanner's buffers.
func (sc *Scanner) Scan(ctx context.Context, root int) (*Graph, error) {
	if root <= 0 {
		return nil, fmt.Errorf("scan pid %d: %w", root, ErrNoProcess)
	}
	start := time.Now()
	sc.gen++
	sc.kept = nil
	defer sc.sweep()
	s := &scanner{
		sc:      sc,
		cfg:     sc.cfg,
		r:       sc.r,
		self:    sc.self,
		g:       &Graph{Root: root, Scope: sc.cfg.Scope, Time: start},
		byID:    make(map[string]*Node, sc.lastNodes+64),
		procs:   make(map[int]*Node, 16),
		sockets: make(map[uint64]*sockUse, sc.last.sockets+64),
		stats:   make(map[uint64]map[string]fileStat, 2),
		pipes:   make(map[uint64]*Node, sc.last.pipes+64),
		files:   make(map[string]*Node, sc.last.files+64),
		noFDs:   make(map[int]bool),
	}
	if err := s.run(ctx, root); err != nil {
		return nil, err
	}
	s.g.Duration = time.Since(start)
	return s.g, nil
}

// scanner holds the state of one scan.
type scanner struct {
	sc   *Scanner
	cfg  Config
	r    *procReader
	self map[string]uint64
	g    *Graph

	nodes   []*Node
	byID    map[string]*Node
	procs   map[int]*Node
	order   []int // tree pids in discovery order
	sockets map[uint64]*sockUse
	sockDia map[uint64]*diagSock // sock_diag view of the tree's sockets
	peers   map[uint64]*diagSock // UNIX peers outside the tree
	devMaps []devMap
	fdBuf   []int
	openBuf []int                          // descriptors found open, for procFiles.fds
	allPIDs []int                          // the machine's processes, when listed at the start
	noFDs   map[int]bool                   // kernel threads and zombies: they hold no descriptors
	stats   map[uint64]map[string]fileStat // by mount namespace and path
	pipes   map[uint64]*Node
	files   map[string]*Node // "file:PATH" nodes by path
	slab    []Node           // nodes are allocated from it in blocks
	// internal holds the IDs of inet sockets whose peer is a socket of
	// the tree.
	internal map[string]bool
	// iter holds the descriptors of the processes it covers, read at
	// the start of the scan; nil when procfs is read instead.
	iter *fdRecs
	// later are the processes whose descriptors wait for a second
	// iterator pass, after the tree is known; canIter says this scan
	// may use the iterator.
	later   []laterFDs
	canIter bool
	// procfsWhy says why descriptors went through procfs, for FDSource.
	procfsWhy string
	// procfsFDs counts the processes whose descriptors were read through
	// procfs.
	procfsFDs int
}

// notPaying is why a scan reads procfs when the iterator does not pay.
const notPaying = "an iterator pass costs more than their descriptors"

// laterFDs is a process read but for its descriptors.
type laterFDs struct {
	pf         *procFiles
	p          *Process
	unreadable func(string, error)
}

// readLaterFDs reads the descriptors of the processes the first iterator
// pass did not cover, with a second pass over just those, or through
// procfs if that does not pay or fails.
func (s *scanner) readLaterFDs() {
	if len(s.later) == 0 {
		return
	}
	// The kernel counts a process's descriptors as the size of its
	// /proc/PID/fd (Linux 6.2+; 0 before, and then procfs is read).
	fds := 0
	for _, l := range s.later {
		if fdDir, _, err := s.sc.openFDDir(l.pf); err == nil {
			fds += max(0, s.sc.fdCount(fdDir))
		}
	}
	s.iter = nil
	if fds > 0 && s.sc.iterPays(fds) {
		pids := make([]int, len(s.later))
		for i, l := range s.later {
			pids[i] = l.p.PID
		}
		s.iter = s.sc.readIter(pids)
	} else {
		s.procfsWhy = notPaying
	}
	for _, l := range s.later {
		s.readFDs(l.pf, l.p, l.unreadable)
		s.sc.releaseProc(l.p.PID, l.pf)
	}
	s.later = nil
}

// scanSizes are the sizes of a scan's tables, which the next scan of the
// same tree allocates at once instead of growing them.
type scanSizes struct {
	sockets, pipes, files, statPaths int
	edges                            int // deduplicated ones, set by buildEdges
}

// sockUse is a socket inode held by tree processes.
type sockUse struct {
	ino     uint64
	netns   uint64
	holders []Holder
}

type devMap struct {
	pid  int
	path string
}

func (s *scanner) problem(node, what string, err error, vanished bool) {
	s.g.Partial = true
	s.g.Problems = append(s.g.Problems, Problem{Node: node, What: what, Err: errString(err), Vanished: vanished})
}

func errString(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		return en.Error()
	}
	return err.Error()
}

// node returns the node id, creating it with kind and label when new.
func (s *scanner) node(id string, kind NodeKind, label string) *Node {
	if n, ok := s.byID[id]; ok {
		return n
	}
	if len(s.slab) == 0 {
		s.slab = make([]Node, 256)
	}
	n := &s.slab[0]
	s.slab = s.slab[1:]
	*n = Node{ID: id, Kind: kind, Label: label, Verdict: Verdict{Level: LevelOK}}
	s.byID[id] = n
	s.nodes = append(s.nodes, n)
	return n
}

func (s *scanner) run(ctx context.Context, root int) error {
	// Tree discovery: through /proc/PID/task/TID/children (cost grows
	// with the tree's threads), or, when the previous scan found more
	// threads than the machine has processes, from the parent pid of
	// every process (cost grows with the machine's processes).
	var stats map[int]*statInfo
	var kids map[int][]int
	if s.sc.lastThreads >= 32 {
		if pids, err := s.listPIDs(); err == nil {
			s.allPIDs = pids
			if len(pids) < s.sc.lastThreads {
				stats, kids = s.readAllStats(pids)
			}
		}
	}
	// Descriptors: the processes of the last scan in one iterator pass
	// now, if that pays, and the others in a second pass once the tree
	// is known (readLaterFDs).
	s.canIter = s.sc.iterPossible()
	if s.canIter && s.sc.lastFDs > 0 {
		if s.sc.iterPays(s.sc.lastFDs) {
			s.iter = s.sc.readIter(append(s.sc.lastPIDs, root))
		} else {
			s.canIter, s.procfsWhy = false, notPaying
		}
	}
	defer func() {
		for _, l := range s.later { // a scan that ended early
			s.sc.releaseProc(l.p.PID, l.pf)
		}
	}()
	queue := []int{root}
	seen := map[int]bool{root: true}
	rootPidNS := uint64(0)
	threads := 0
	for len(queue) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		pid := queue[0]
		queue = queue[1:]
		children, err := s.readProcess(pid, pid == root, stats[pid], kids == nil)
		if pid == root {
			if err != nil {
				return fmt.Errorf("scan pid %d: %w", root, err)
			}
			rootPidNS = s.procs[root].Process.Namespaces["pid"]
		}
		if n := s.procs[pid]; n != nil {
			threads += n.Process.ThreadCount
		}
		if kids != nil {
			children = kids[pid]
		}
		// Children in pid order: both ways of discovery give the same
		// order, and so the same node and edge order.
		slices.Sort(children)
		for _, c := range children {
			if !seen[c] {
				seen[c] = true
				queue = append(queue, c)
			}
		}
		if len(queue) == 0 && s.cfg.Scope == ScopePIDNamespace && rootPidNS != 0 {
			for _, pid := range s.pidsInNamespace(rootPidNS) {
				if !seen[pid] {
					seen[pid] = true
					queue = append(queue, pid)
				}
			}
			rootPidNS = 0 // one pass
		}
	}
	s.sc.lastThreads = threads
	s.readLaterFDs()
	s.sc.lastPIDs = append(s.sc.lastPIDs[:0], s.order...)
	s.sc.lastFDs = 0
	for _, pid := range s.order {
		if n := s.procs[pid]; n != nil {
			s.sc.lastFDs += n.Process.FDCount
		}
	}
	switch {
	case s.procfsFDs == 0:
		s.sc.lastSource = "bpf-iterator"
	case s.canIter && !iterLoaded.Load():
		s.procfsWhy = "bpf iterator loading"
		fallthrough
	case s.procfsWhy != "":
		s.sc.lastSource = fmt.Sprintf("procfs for %d processes (%s)", s.procfsFDs, s.procfsWhy)
	default:
		s.sc.lastSource = "procfs"
	}
	defer func() {
		s.sc.lastNodes = len(s.nodes)
		l := &s.sc.last
		l.sockets, l.pipes, l.files, l.statPaths = len(s.sockets), len(s.pipes), len(s.files), 0
		for _, byPath := range s.stats {
			l.statPaths = max(l.statPaths, len(byPath))
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	s.resolveSockets()
	s.resolveSysV()
	if s.cfg.OutsideHolders {
		s.findOutsideHolders()
	}
	s.pipeEnds()
	s.buildEdges()
	s.judge()
	s.finish()
	return nil
}

// listPIDs lists the processes of the machine.
func (s *scanner) listPIDs() ([]int, error) {
	dfd, err := unix.Open(s.cfg.ProcRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	var pids []int
	err = s.r.readDirNames(dfd, func(name []byte) {
		if n, ok := atoiBytes(name); ok {
			pids = append(pids, n)
		}
	})
	return pids, err
}

// readAllStats reads /proc/PID/stat of every pid and returns them with
// the children of each pid.
func (s *scanner) readAllStats(pids []int) (map[int]*statInfo, map[int][]int) {
	stats := make(map[int]*statInfo, len(pids))
	kids := make(map[int][]int, len(pids))
	root, err := s.sc.procRootFD()
	if err != nil {
		return nil, nil
	}
	for _, pid := range pids {
		// The files of the tree's processes are kept open between scans;
		// those of the rest of the machine are not, so that a Scanner
		// holds descriptors in proportion to its tree only.
		var b []byte
		var err error
		if pf := s.sc.pfs[pid]; pf != nil {
			pf.gen = s.sc.gen
			b, err = s.sc.readProcFile(pid, pf, pfStat)
			if err != nil {
				s.sc.releaseProc(pid, pf)
			}
		} else {
			b, err = s.r.readRecordAt(root, strconv.Itoa(pid)+"/stat")
		}
		if err != nil {
			continue
		}
		st, err := parseStat(b)
		if err != nil {
			continue
		}
		stats[pid] = &st
		kids[st.PPID] = append(kids[st.PPID], pid)
		if st.Flags&pfKthread != 0 || st.State == "Z" {
			s.noFDs[pid] = true
		}
	}
	return stats, kids
}

// pidsInNamespace lists the processes whose PID namespace is ns.
func (s *scanner) pidsInNamespace(ns uint64) []int {
	var out []int
	dfd, err := unix.Open(s.cfg.ProcRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.problem("", "process list", err, false)
		return nil
	}
	defer unix.Close(dfd)
	var pids []int
	if err := s.r.readDirNames(dfd, func(name []byte) {
		if n, ok := atoiBytes(name); ok {
			pids = append(pids, n)
		}
	}); err != nil {
		s.problem("", "process list", err, false)
	}
	for _, pid := range pids {
		l, err := s.r.readlinkAt(dfd, strconv.Itoa(pid)+"/ns/pid")
		if err == nil && nsInode(l) == ns {
			out = append(out, pid)
		}
	}
	return out
}

// nsInode extracts the inode of a namespace link "net:[4026531840]".
func nsInode(link string) uint64 {
	i := strings.IndexByte(link, '[')
	j := strings.LastIndexByte(link, ']')
	if i < 0 || j <= i {
		return 0
	}
	v, _ := strconv.ParseUint(link[i+1:j], 10, 64)
	return v
}

// readProcess reads one process of the tree into a node and, when
// wantChildren, returns its children. pre is its stat when already read.
// A process that vanished is recorded as a problem, except the root, for
// which the error (wrapping ErrNoProcess) is returned.
func (s *scanner) readProcess(pid int, isRoot bool, pre *statInfo, wantChildren bool) ([]int, error) {
	id := ProcessID(pid)
	gone := func(what string, err error) ([]int, error) {
		if isRoot {
			if isGone(err) {
				return nil, ErrNoProcess
			}
			return nil, err
		}
		s.problem(id, what, err, isGone(err))
		return nil, nil
	}
	pf := s.sc.cachedProc(pid)
	deferred := false
	defer func() {
		if !deferred {
			s.sc.releaseProc(pid, pf)
		}
	}()
	// The stat comes first: reading it checks that kept files still
	// belong to this process (the pid may have been reused).
	var st statInfo
	if pre != nil {
		st = *pre
	} else {
		b, err := s.sc.readProcFile(pid, pf, pfStat)
		if err != nil {
			return gone("process", err)
		}
		if st, err = parseStat(b); err != nil {
			return gone("stat", err)
		}
	}
	dfd, err := s.sc.procDir(pid, pf)
	if err != nil {
		return gone("process", err)
	}
	p := &Process{
		PID: pid, PPID: st.PPID, PGID: st.PGID, SID: st.SID, Comm: st.Comm, State: st.State,
		StartTicks: st.StartTime, CPUTime: ticksToDuration(st.UTime + st.STime),
		RSS: st.RSSPages * uint64(unix.Getpagesize()), ThreadCount: st.NumThreads,
	}
	n := s.node(id, KindProcess, strconv.Itoa(pid)+" "+st.Comm)
	n.Process = p
	s.procs[pid] = n
	s.order = append(s.order, pid)

	unreadable := func(what string, err error) {
		if isGone(err) && what != "exe" {
			// The process exited while being read.
			s.problem(id, what, err, true)
		} else {
			s.problem(id, what, err, false)
		}
		p.Unreadable = append(p.Unreadable, what+": "+errString(err))
	}

	if b, err := s.sc.readProcFile(pid, pf, pfStatus); err == nil {
		ss := parseStatus(b)
		p.UID, p.TracerPID, p.NSPID = ss.UID, ss.TracerPID, ss.NSPID
		if ss.HasVmRSS {
			p.RSS = ss.VmRSS
		}
	} else {
		unreadable("status", err)
	}
	if s.cfg.ProcessDetails {
		if b, err := s.r.readRecordAt(dfd, "cmdline"); err == nil {
			p.Cmdline = parseCmdline(b)
		} else {
			unreadable("cmdline", err)
		}
		if l, err := s.r.readlinkAt(dfd, "exe"); err == nil {
			p.Exe = l
		} else if !errors.Is(err, unix.ENOENT) { // kernel threads and zombies have no exe
			unreadable("exe", err)
		}
		if b, err := s.r.readRecordAt(dfd, "cgroup"); err == nil {
			p.Cgroups = parseLines(b)
		} else {
			unreadable("cgroup", err)
		}
	}
	p.Namespaces = make(map[string]uint64, len(nsNames))
	for i, nsPath := range s.sc.nsPaths {
		if !s.cfg.ProcessDetails && !verdictNS[nsNames[i]] {
			continue
		}
		if ino := pf.fixedNS[i]; ino != 0 {
			p.Namespaces[nsNames[i]] = ino
			continue
		}
		l, err := s.r.readlinkBytes(dfd, nsPath)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // namespace type not supported by this kernel
			}
			unreadable("namespaces", err)
			break
		}
		ino, _ := bracketNum(l)
		p.Namespaces[nsNames[i]] = ino
		if fixedNS[i] {
			pf.fixedNS[i] = ino
		}
	}

	children := s.readThreads(dfd, p, wantChildren, unreadable)
	s.readMappings(pf, p, unreadable)
	if s.canIter && (s.iter == nil || !s.iter.covers(pid)) {
		// A process the iterator did not read (new since the last
		// scan): read it with the others after the tree is known.
		deferred = true
		s.later = append(s.later, laterFDs{pf, p, unreadable})
		return children, nil
	}
	s.readFDs(pf, p, unreadable)
	return children, nil
}

// readThreads reads the threads of p (when Config.Threads) and, when
// wantChildren, returns the children of all of them.
func (s *scanner) readThreads(dfd int, p *Process, wantChildren bool, unreadable func(string, error)) []int {
	if !s.cfg.Threads && !wantChildren {
		return nil
	}
	tfd, err := s.r.openat(dfd, "task", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		unreadable("task", err)
		return nil
	}
	defer s.r.close(tfd)
	var tids []int
	if err := s.r.readDirNames(tfd, func(name []byte) {
		if n, ok := atoiBytes(name); ok {
			tids = append(tids, n)
		}
	}); err != nil {
		unreadable("task", err)
	}
	sort.Ints(tids)
	var children []int
	childErr := false
	for _, tid := range tids {
		ts := strconv.Itoa(tid)
		if s.cfg.Threads {
			t := Thread{TID: tid}
			b, err := s.r.readRecordAt(tfd, ts+"/stat")
			if err != nil && isGone(err) {
				continue // the thread exited
			}
			if err == nil {
				if st, err := parseStat(b); err == nil {
					t.Comm, t.State, t.CPUTime = st.Comm, st.State, ticksToDuration(st.UTime+st.STime)
				}
			}
			p.Threads = append(p.Threads, t)
		}
		if !wantChildren {
			continue
		}
		b, err := s.r.readChildrenAt(tfd, ts+"/children")
		if err != nil {
			if errors.Is(err, unix.ENOENT) && !isGoneDir(tfd, ts) {
				// Kernel without CONFIG_PROC_CHILDREN: fall back to
				// scanning every process for its parent.
				return s.childrenByScan(p.PID)
			}
			if !isGone(err) && !childErr {
				childErr = true
				unreadable("children", err)
			}
			continue
		}
		parseChildren(b, func(c int) { children = append(children, c) })
	}
	return children
}

// isGoneDir reports whether the directory name under dirfd has vanished.
func isGoneDir(dirfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dirfd, name, &st, 0) != nil
}

// childrenByScan finds the children of ppid by reading the parent of every
// process.
func (s *scanner) childrenByScan(ppid int) []int {
	dfd, err := unix.Open(s.cfg.ProcRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(dfd)
	var pids, out []int
	_ = s.r.readDirNames(dfd, func(name []byte) {
		if n, ok := atoiBytes(name); ok {
			pids = append(pids, n)
		}
	})
	for _, pid := range pids {
		b, err := s.r.readRecordAt(dfd, strconv.Itoa(pid)+"/stat")
		if err != nil {
			continue
		}
		if st, err := parseStat(b); err == nil && st.PPID == ppid {
			out = append(out, pid)
		}
	}
	return out
}

// readMappings reads /proc/PID/smaps (or maps) into p and records the
// shared resources behind the mappings.
func (s *scanner) readMappings(pf *procFiles, p *Process, unreadable func(string, error)) {
	file, which := "maps", pfMaps
	if s.cfg.MapSizes {
		file, which = "smaps", pfSmaps
	}
	b, err := s.sc.readProcFile(p.PID, pf, which)
	if err != nil {
		unreadable(file, err)
		return
	}
	sums := map[MapKind]*MapSummary{}
	var pss uint64
	lines := bytes.Count(b, []byte{'\n'})
	if s.cfg.MapSizes {
		lines /= 20 // an smaps entry is over 20 lines
	}
	if s.cfg.Mappings {
		p.Mappings = make([]Mapping, 0, lines+1)
	}
	perr := parseMaps(b, s.sc.intern, func(m *Mapping) {
		mm := *m
		pss += mm.PSS
		if id := s.mappingResource(p.PID, &mm); id != "" {
			mm.Resource = id
		}
		if s.cfg.Mappings || keepMapping(&mm) {
			p.Mappings = append(p.Mappings, mm)
		}
		sum := sums[mm.Kind]
		if sum == nil {
			sum = &MapSummary{Kind: mm.Kind}
			sums[mm.Kind] = sum
		}
		sum.Count++
		sum.Size += mm.Size
		sum.RSS += mm.RSS
		sum.Dirty += mm.Dirty
	})
	if perr != nil {
		unreadable(file, perr)
	}
	if s.cfg.MapSizes {
		p.PSS = pss
	}
	for _, sum := range sums {
		p.MapSummary = append(p.MapSummary, *sum)
	}
	sort.Slice(p.MapSummary, func(i, j int) bool { return p.MapSummary[i].Kind < p.MapSummary[j].Kind })
}

// keepMapping reports whether a mapping matters to a verdict or an edge:
// one backed by a shared resource, a kernel special mapping, a deleted
// file or a device.
func keepMapping(m *Mapping) bool {
	switch {
	case m.Resource != "", m.Kind == MapSpecial:
		return true
	case m.Kind == MapFilePrivate:
		return strings.HasSuffix(m.Path, deletedSuffix) || strings.HasPrefix(m.Path, "/dev/")
	}
	return false
}

// mappingResource creates (or finds) the node of the shared resource
// behind m and returns its ID, or "" for private memory.
func (s *scanner) mappingResource(pid int, m *Mapping) string {
	path := strings.TrimSuffix(m.Path, deletedSuffix)
	deleted := path != m.Path
	var n *Node
	switch m.Kind {
	case MapSysVShm:
		key, _ := strconv.ParseUint(strings.TrimPrefix(path, "/SYSV"), 16, 32)
		n = s.node("sysv-shm:"+strconv.FormatUint(m.Inode, 10), KindSysVShm, sysvLabel("shm", int32(uint32(key)), int(m.Inode)))
		if n.IPC == nil {
			n.IPC = &IPCInfo{Type: "shm", ID: int(m.Inode), Key: int32(uint32(key))}
		}
	case MapMemfd:
		n = s.node("memfd:"+strconv.FormatUint(m.Inode, 10), KindMemfd, path[1:])
		if n.File == nil {
			n.File = &FileInfo{Path: path, Deleted: deleted, Type: "regular", Dev: m.Dev, Inode: m.Inode}
		}
	case MapAnonShared:
		if m.Inode == 0 {
			return ""
		}
		n = s.node("shmem:"+strconv.FormatUint(m.Inode, 10), KindSharedAnon, "shared anon memory "+strconv.FormatUint(m.Inode, 10))
	case MapFileShared:
		kind := KindFile
		if strings.HasPrefix(path, "/dev/shm/") {
			kind = KindPosixShm
		} else if strings.HasPrefix(path, "/dev/") {
			s.devMaps = append(s.devMaps, devMap{pid: pid, path: path})
		}
		n = s.files[path]
		if n == nil {
			n = s.node("file:"+path, kind, path)
			s.files[path] = n
		}
		if n.File == nil {
			n.File = &FileInfo{Path: path, Deleted: deleted, Type: "regular", Dev: m.Dev, Inode: m.Inode}
		}
		if strings.Contains(m.Perms, "w") {
			n.File.Written = true
		}
	case MapFilePrivate:
		if strings.HasPrefix(path, "/dev/") && path != "/dev/zero" {
			s.devMaps = append(s.devMaps, devMap{pid: pid, path: path})
		}
		return ""
	default:
		return ""
	}
	n.Mappers = append(n.Mappers, Mapper{PID: pid, Start: m.Start, End: m.End, Perms: m.Perms})
	return n.ID
}

// nsLinkType returns the namespace type of a link "net:[...]", or "".
func nsLinkType(link string) string {
	i := strings.Index(link, ":[")
	if i <= 0 {
		return ""
	}
	t := link[:i]
	for _, ns := range nsNames {
		if t == ns {
			return t
		}
	}
	return ""
}

// anonKind maps the name of an anonymous inode to a node kind.
func anonKind(what string) NodeKind {
	switch what {
	case "eventfd":
		return KindEventfd
	case "signalfd":
		return KindSignalfd
	case "timerfd":
		return KindTimerfd
	case "eventpoll":
		return KindEpoll
	case "inotify":
		return KindInotify
	case "fanotify":
		return KindFanotify
	case "pidfd":
		return KindPidfd
	case "io_uring":
		return KindIOUring
	case "bpf-map", "bpf-prog", "bpf_link", "bpf-link", "bpf_iter":
		return KindBPF
	}
	return KindAnonInode
}

// TTY majors, as CRIU's get_tty_driver knows them.
const (
	ttyMajor         = 4
	ttyAuxMajor      = 5
	ptyMasterMajor   = 128 // 128..135
	ptySlaveMajor    = 136 // 136..143
	usbSerialMajor   = 188
	lowDenseSerMajor = 204
	memMajor         = 1
	miscMajor        = 10
	tunMinor         = 200
	autofsMinor      = 235
)

func isTTYDev(rdev uint64) bool {
	maj := unix.Major(rdev)
	switch {
	case maj == ttyMajor, maj == ttyAuxMajor, maj == usbSerialMajor, maj == lowDenseSerMajor:
		return true
	case maj >= ptyMasterMajor && maj < ptySlaveMajor+8:
		return true
	}
	return false
}

// resolveSockets asks sock_diag about the sockets of the tree and creates
// their nodes.
func (s *scanner) resolveSockets() {
	if len(s.sockets) == 0 {
		return
	}
	byNS := map[uint64]map[uint64]bool{}
	nsPid := map[uint64]int{}
	for ino, u := range s.sockets {
		if byNS[u.netns] == nil {
			// Most trees live in one network namespace.
			byNS[u.netns] = make(map[uint64]bool, len(s.sockets))
			nsPid[u.netns] = u.holders[0].PID
		}
		byNS[u.netns][ino] = true
	}
	s.peers = map[uint64]*diagSock{}
	for ns, want := range byNS {
		res, err := s.collectSockets(nsPid[ns], ns, s.self["net"], want)
		if err != nil {
			s.problem("", "sock_diag", err, false)
		}
		if res == nil {
			continue
		}
		if s.sockDia == nil && len(byNS) == 1 {
			s.sockDia = res.byInode
		} else {
			if s.sockDia == nil {
				s.sockDia = make(map[uint64]*diagSock, len(s.sockets))
			}
			for ino, d := range res.byInode {
				s.sockDia[ino] = d
			}
		}
		for ino, d := range res.unixPeers {
			s.peers[ino] = d
		}
	}
	var idBuf [64]byte
	for ino, u := range s.sockets {
		d := s.sockDia[ino]
		var kind NodeKind
		var si *SocketInfo
		if d != nil {
			// The node takes the sock_diag record's info: nothing
			// changes it after collectSockets.
			kind, si = d.kind, &d.info
		} else {
			h := u.holders[0]
			proto := sockProtoName(filepath.Join(s.cfg.ProcRoot, strconv.Itoa(h.PID), "fd"), h.FD)
			var fam string
			kind, fam = kindOfProtoName(proto)
			si = &SocketInfo{Inode: ino, Family: fam, NetNS: u.netns}
			switch kind {
			case KindTCP:
				si.Protocol = "tcp"
			case KindUDP:
				si.Protocol = "udp"
			}
		}
		id := strconv.AppendUint(append(append(idBuf[:0], kind...), ':'), ino, 10)
		n := s.node(string(id), kind, socketLabel(kind, si))
		n.Socket = si
		if n.Holders == nil {
			n.Holders = u.holders
		} else {
			n.Holders = append(n.Holders, u.holders...)
		}
	}
}

func socketLabel(kind NodeKind, si *SocketInfo) string {
	var buf [128]byte
	b := append(buf[:0], kind...)
	if si.Type != "" && kind == KindUnix {
		b = append(append(b, ' '), si.Type...)
	}
	if si.State != "" {
		b = append(append(b, ' '), si.State...)
	}
	if si.Local != "" {
		b = append(append(b, ' '), si.Local...)
	}
	if si.Remote != "" {
		b = append(append(b, " -> "...), si.Remote...)
	}
	if !si.Diag {
		b = append(b, " socket:["...)
		b = strconv.AppendUint(b, si.Inode, 10)
		b = append(b, ']')
	}
	return string(b)
}

// resolveSysV reads the SysV IPC objects of the tree's IPC namespaces and
// attaches those the tree maps, created, used, or (in its own namespace)
// could reach.
func (s *scanner) resolveSysV() {
	nsPid := map[uint64]int{}
	for _, pid := range s.order {
		ns := s.procs[pid].Process.Namespaces["ipc"]
		if _, ok := nsPid[ns]; !ok {
			nsPid[ns] = pid
		}
	}
	selfIPC := s.self["ipc"]
	for ns, pid := range nsPid {
		objs, err := s.readSysV(pid, ns, selfIPC)
		if err != nil {
			s.problem("", "sysvipc", err, false)
		}
		own := ns != selfIPC
		for _, o := range objs {
			id := "sysv-" + o.Type + ":" + strconv.Itoa(o.ID)
			n := s.byID[id]
			inTree := own || s.procs[o.CPID] != nil || s.procs[o.LPID] != nil || s.procs[o.LRPID] != nil
			if n == nil && !inTree {
				continue
			}
			kind := map[string]NodeKind{"shm": KindSysVShm, "msg": KindSysVMsg, "sem": KindSysVSem}[o.Type]
			n = s.node(id, kind, "")
			oo := o
			n.IPC = &oo
			n.Label = sysvLabel(o.Type, o.Key, o.ID)
		}
	}
}

func sysvLabel(typ string, key int32, id int) string {
	return fmt.Sprintf("sysv %s key 0x%08x id %d", typ, uint32(key), id)
}

// findOutsideHolders looks for the tree's pipes and sockets among the
// descriptors of every other process.
func (s *scanner) findOutsideHolders() {
	socks := map[uint64]*Node{}
	for _, n := range s.nodes {
		if n.Socket != nil {
			socks[n.Socket.Inode] = n
		}
	}
	if len(socks) == 0 && len(s.pipes) == 0 {
		return
	}
	dfd, err := unix.Open(s.cfg.ProcRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.problem("", "process list", err, false)
		return
	}
	defer unix.Close(dfd)
	var pids []int
	if s.allPIDs != nil {
		for _, p := range s.allPIDs {
			if s.procs[p] == nil && !s.noFDs[p] {
				pids = append(pids, p)
			}
		}
	} else if err := s.r.readDirNames(dfd, func(name []byte) {
		if n, ok := atoiBytes(name); ok && s.procs[n] == nil {
			pids = append(pids, n)
		}
	}); err != nil {
		s.problem("", "process list", err, false)
	}
	// The Scanner's own kept procfs files are neither pipes nor sockets.
	self := os.Getpid()
	var denied []string
	var fds []int
	for _, pid := range pids {
		ps := strconv.Itoa(pid)
		fdDir, err := s.r.openat(dfd, ps+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
		if err != nil {
			if !isGone(err) {
				denied = append(denied, ps)
			}
			continue
		}
		fds = fds[:0]
		_ = s.r.readDirNames(fdDir, func(name []byte) {
			if n, ok := atoiBytes(name); ok && (pid != self || !s.sc.keeps(n)) {
				fds = append(fds, n)
			}
		})
		comm := ""
		for _, fd := range fds {
			name := s.sc.fdName(fd)
			link, err := s.r.readlinkBytes(fdDir, name)
			if err == unix.EACCES || err == unix.EPERM {
				denied = append(denied, ps)
				break
			}
			if err != nil || len(link) < 6 || (link[0] != 'p' && link[0] != 's') {
				continue
			}
			var n *Node
			if ino, ok := bracketNum(link); ok {
				if bytes.HasPrefix(link, prefixPipe) {
					n = s.pipes[ino]
				} else if bytes.HasPrefix(link, prefixSocket) {
					n = socks[ino]
				}
			}
			if n == nil {
				continue
			}
			if comm == "" {
				if b, err := s.r.readRecordAt(dfd, ps+"/comm"); err == nil {
					comm = strings.TrimSpace(string(b))
				}
			}
			oh := OutsideHolder{PID: pid, Comm: comm, FD: fd, Access: "rw"}
			if n.Kind == KindPipe {
				var st unix.Stat_t
				if s.r.fstatat(fdDir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
					oh.Access = accessOfLinkMode(st.Mode)
				}
			}
			n.Outside = append(n.Outside, oh)
		}
		s.r.close(fdDir)
	}
	if len(denied) > 0 {
		// Not a part of the tree: the graph stays complete, but the
		// check for shared descriptors could not cover these.
		if len(denied) > 8 {
			denied = append(denied[:8], "...")
		}
		s.g.Problems = append(s.g.Problems, Problem{What: "outside holders",
			Err: "descriptors of pid " + strings.Join(denied, ", ") + " outside the tree: " + unix.EACCES.Error()})
	}
}

// finish fills the Graph with the nodes in order.
func (s *scanner) finish() {
	slices.SortFunc(s.nodes, nodeCmp)
	for _, n := range s.nodes {
		if len(n.Holders) > 1 {
			slices.SortFunc(n.Holders, func(a, b Holder) int {
				if a.PID != b.PID {
					return cmp.Compare(a.PID, b.PID)
				}
				return cmp.Compare(a.FD, b.FD)
			})
		}
	}
	s.g.Nodes = s.nodes
	s.g.index = s.byID
	slices.SortStableFunc(s.g.Problems, func(a, b Problem) int { return strings.Compare(a.Node, b.Node) })
}
