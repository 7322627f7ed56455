package introspect

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoProcess is wrapped by Scan's error when the root process does not
// exist (or exited before it could be read).
var ErrNoProcess = errors.New("introspect: no such process")

// nsNames are the namespaces recorded for each process.
var nsNames = [...]string{"cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "user", "uts"}

// Scanner builds resource graphs. It keeps its read buffers between scans,
// so a caller that scans repeatedly (the checkpoint engine, a Watcher)
// allocates less. A Scanner is not safe for concurrent use.
type Scanner struct {
	cfg  Config
	r    *procReader
	self map[string]uint64 // namespaces of the scanning process
}

// NewScanner returns a Scanner for cfg (zero fields take their defaults).
func NewScanner(cfg Config) *Scanner {
	cfg = cfg.normalized()
	sc := &Scanner{cfg: cfg, r: newProcReader(), self: map[string]uint64{}}
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
	return NewScanner(cfg).Scan(ctx, root)
}

// Scan is the package-level Scan using the Scanner's buffers.
func (sc *Scanner) Scan(ctx context.Context, root int) (*Graph, error) {
	if root <= 0 {
		return nil, fmt.Errorf("scan pid %d: %w", root, ErrNoProcess)
	}
	start := time.Now()
	s := &scanner{
		cfg:     sc.cfg,
		r:       sc.r,
		self:    sc.self,
		g:       &Graph{Root: root, Scope: sc.cfg.Scope, Time: start},
		byID:    make(map[string]*Node, 256),
		procs:   make(map[int]*Node, 16),
		sockets: make(map[uint64]*sockUse, 64),
	}
	if err := s.run(ctx, root); err != nil {
		return nil, err
	}
	s.g.Duration = time.Since(start)
	return s.g, nil
}

// scanner holds the state of one scan.
type scanner struct {
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
	maps    map[int][]mapUse     // shared mappings per pid
	devMaps []devMap
	// internal holds the IDs of inet sockets whose peer is a socket of
	// the tree.
	internal map[string]bool
}

// sockUse is a socket inode held by tree processes.
type sockUse struct {
	ino     uint64
	netns   uint64
	holders []Holder
}

// mapUse is a mapping of a tree process backed by a shared resource.
type mapUse struct {
	id string
	m  Mapper
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
	n := &Node{ID: id, Kind: kind, Label: label, Verdict: Verdict{Level: LevelOK}}
	s.byID[id] = n
	s.nodes = append(s.nodes, n)
	return n
}

func (s *scanner) run(ctx context.Context, root int) error {
	procRoot := s.cfg.ProcRoot
	// The root must exist; everything after this is best effort.
	if _, err := s.r.readFileAt(unix.AT_FDCWD, filepath.Join(procRoot, strconv.Itoa(root), "stat")); err != nil {
		if isGone(err) {
			return fmt.Errorf("scan pid %d: %w", root, ErrNoProcess)
		}
		return fmt.Errorf("scan pid %d: %w", root, err)
	}
	queue := []int{root}
	seen := map[int]bool{root: true}
	rootPidNS := uint64(0)
	for len(queue) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		pid := queue[0]
		queue = queue[1:]
		children := s.readProcess(pid, pid == root)
		if pid == root {
			if n := s.procs[root]; n == nil {
				return fmt.Errorf("scan pid %d: %w", root, ErrNoProcess)
			} else {
				rootPidNS = n.Process.Namespaces["pid"]
			}
		}
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
	if err := ctx.Err(); err != nil {
		return err
	}
	s.resolveSockets()
	s.resolveSysV()
	if s.cfg.OutsideHolders {
		s.findOutsideHolders()
	}
	s.buildEdges()
	s.judge()
	s.finish()
	return nil
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

// readProcess reads one process of the tree into a node and returns its
// children. A process that vanished is recorded as a problem.
func (s *scanner) readProcess(pid int, isRoot bool) []int {
	id := ProcessID(pid)
	pdir := filepath.Join(s.cfg.ProcRoot, strconv.Itoa(pid))
	dfd, err := openat(unix.AT_FDCWD, pdir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		if !isRoot {
			s.problem(id, "process", err, isGone(err))
		}
		return nil
	}
	defer unix.Close(dfd)
	b, err := s.r.readFileAt(dfd, "stat")
	if err != nil {
		if !isRoot {
			s.problem(id, "process", err, isGone(err))
		}
		return nil
	}
	st, err := parseStat(b)
	if err != nil {
		s.problem(id, "stat", err, false)
		return nil
	}
	p := &Process{
		PID: pid, PPID: st.PPID, PGID: st.PGID, SID: st.SID, Comm: st.Comm, State: st.State,
		StartTicks: st.StartTime, CPUTime: ticksToDuration(st.UTime + st.STime),
		RSS: st.RSSPages * uint64(unix.Getpagesize()),
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

	if b, err := s.r.readFileAt(dfd, "status"); err == nil {
		ss := parseStatus(b)
		p.UID, p.TracerPID, p.NSPID = ss.UID, ss.TracerPID, ss.NSPID
		if ss.HasVmRSS {
			p.RSS = ss.VmRSS
		}
	} else {
		unreadable("status", err)
	}
	if b, err := s.r.readFileAt(dfd, "cmdline"); err == nil {
		p.Cmdline = parseCmdline(b)
	} else {
		unreadable("cmdline", err)
	}
	if l, err := s.r.readlinkAt(dfd, "exe"); err == nil {
		p.Exe = l
	} else if !errors.Is(err, unix.ENOENT) { // kernel threads and zombies have no exe
		unreadable("exe", err)
	}
	if b, err := s.r.readFileAt(dfd, "cgroup"); err == nil {
		p.Cgroups = parseLines(b)
	} else {
		unreadable("cgroup", err)
	}
	p.Namespaces = make(map[string]uint64, len(nsNames))
	for _, ns := range nsNames {
		l, err := s.r.readlinkAt(dfd, "ns/"+ns)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // namespace type not supported by this kernel
			}
			unreadable("namespaces", err)
			break
		}
		p.Namespaces[ns] = nsInode(l)
	}

	children := s.readThreads(dfd, p, unreadable)
	s.readMappings(dfd, p, unreadable)
	s.readFDs(dfd, pdir, p, unreadable)
	return children
}

// readThreads lists the threads of p and returns the children of all of
// them.
func (s *scanner) readThreads(dfd int, p *Process, unreadable func(string, error)) []int {
	tfd, err := openat(dfd, "task", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		unreadable("task", err)
		return nil
	}
	defer unix.Close(tfd)
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
		t := Thread{TID: tid}
		if s.cfg.Threads {
			if b, err := s.r.readFileAt(tfd, ts+"/stat"); err == nil {
				if st, err := parseStat(b); err == nil {
					t.Comm, t.State, t.CPUTime = st.Comm, st.State, ticksToDuration(st.UTime+st.STime)
				}
			} else if isGone(err) {
				continue // the thread exited
			}
		}
		p.Threads = append(p.Threads, t)
		b, err := s.r.readFileAt(tfd, ts+"/children")
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
		b, err := s.r.readFileAt(dfd, strconv.Itoa(pid)+"/stat")
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
func (s *scanner) readMappings(dfd int, p *Process, unreadable func(string, error)) {
	file := "maps"
	if s.cfg.MapSizes {
		file = "smaps"
	}
	b, err := s.r.readFileAt(dfd, file)
	if err != nil {
		unreadable(file, err)
		return
	}
	sums := map[MapKind]*MapSummary{}
	var pss uint64
	perr := parseMaps(b, func(m *Mapping) {
		mm := *m
		pss += mm.PSS
		if id := s.mappingResource(p.PID, &mm); id != "" {
			mm.Resource = id
		}
		p.Mappings = append(p.Mappings, mm)
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
		n = s.node("file:"+path, kind, path)
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
	if s.maps == nil {
		s.maps = map[int][]mapUse{}
	}
	s.maps[pid] = append(s.maps[pid], mapUse{id: n.ID, m: Mapper{PID: pid, Start: m.Start, End: m.End, Perms: m.Perms}})
	return n.ID
}

// readFDs resolves every descriptor of p to a resource node.
func (s *scanner) readFDs(dfd int, pdir string, p *Process, unreadable func(string, error)) {
	fdDir, err := openat(dfd, "fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		unreadable("fds", err)
		return
	}
	defer unix.Close(fdDir)
	var fds []int
	if err := s.r.readDirNames(fdDir, func(name []byte) {
		if n, ok := atoiBytes(name); ok {
			fds = append(fds, n)
		}
	}); err != nil {
		unreadable("fds", err)
	}
	sort.Ints(fds)
	infoDir, err := openat(dfd, "fdinfo", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		unreadable("fdinfo", err)
		infoDir = -1
	} else {
		defer unix.Close(infoDir)
	}
	fdDirPath := pdir + "/fd"
	infoErr := false
	fdinfoOf := func(name string, extra bool) (fdinfo, bool) {
		if infoDir < 0 {
			return fdinfo{}, false
		}
		b, err := s.r.readFileAt(infoDir, name)
		if err != nil {
			if !isGone(err) && !infoErr {
				infoErr = true
				unreadable("fdinfo", err)
			}
			return fdinfo{}, false
		}
		return parseFdinfo(b, extra), true
	}
	linkErr := false
	for _, fd := range fds {
		name := strconv.Itoa(fd)
		link, err := s.r.readlinkAt(fdDir, name)
		if err != nil {
			if isGone(err) {
				continue // closed meanwhile
			}
			if !linkErr {
				linkErr = true
				unreadable("fd "+name, err)
			}
			continue
		}
		p.FDCount++
		s.classifyFD(p, fd, name, link, fdDir, fdDirPath, fdinfoOf)
	}
}

// classifyFD turns the link text of one descriptor into a resource node
// and a holder on it.
func (s *scanner) classifyFD(p *Process, fd int, name, link string, fdDir int, fdDirPath string, fdinfoOf func(string, bool) (fdinfo, bool)) {
	pid := p.PID
	h := Holder{PID: pid, FD: fd}
	switch {
	case strings.HasPrefix(link, "socket:["):
		ino := nsInode(link)
		u := s.sockets[ino]
		if u == nil {
			u = &sockUse{ino: ino, netns: p.Namespaces["net"]}
			s.sockets[ino] = u
		}
		h.Access = "rw"
		u.holders = append(u.holders, h)
		return

	case strings.HasPrefix(link, "pipe:["):
		ino := nsInode(link)
		var st unix.Stat_t
		if unix.Fstatat(fdDir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			h.Access = accessOfLinkMode(st.Mode)
		}
		n := s.node("pipe:"+strconv.FormatUint(ino, 10), KindPipe, link)
		n.Holders = append(n.Holders, h)
		return

	case strings.HasPrefix(link, "anon_inode:"):
		what := strings.Trim(strings.TrimPrefix(link, "anon_inode:"), "[]")
		kind := anonKind(what)
		fi, ok := fdinfoOf(name, kind != KindIOUring)
		if ok {
			h.Flags, h.Access = fi.Flags, accessOf(fi.Flags)
		}
		n := s.node(string(kind)+":"+strconv.Itoa(pid)+":"+name, kind, what+" (fd "+name+" of "+strconv.Itoa(pid)+")")
		if kind == KindAnonInode || kind == KindBPF {
			if n.Info == nil {
				n.Info = map[string]string{}
			}
			n.Info["anon_inode"] = what
		}
		for k, v := range fi.Extra {
			if n.Info == nil {
				n.Info = map[string]string{}
			}
			n.Info[k] = v
		}
		n.Holders = append(n.Holders, h)
		return

	case strings.HasPrefix(link, "pidfd:"):
		fi, ok := fdinfoOf(name, true)
		if ok {
			h.Flags, h.Access = fi.Flags, accessOf(fi.Flags)
		}
		n := s.node("pidfd:"+strconv.Itoa(pid)+":"+name, KindPidfd, "pidfd (fd "+name+" of "+strconv.Itoa(pid)+")")
		if len(fi.Extra) > 0 {
			n.Info = fi.Extra
		}
		n.Holders = append(n.Holders, h)
		return

	case len(link) > 0 && link[0] == '/':
		s.classifyPathFD(p, h, name, link, fdDir, fdinfoOf)
		return

	case strings.Contains(link, ":[") && nsLinkType(link) != "":
		n := s.node("nsfile:"+link, KindNSFile, link)
		if fi, ok := fdinfoOf(name, false); ok {
			h.Flags, h.Access = fi.Flags, accessOf(fi.Flags)
		}
		n.Holders = append(n.Holders, h)
		return
	}
	n := s.node("unknown:"+strconv.Itoa(pid)+":"+name, KindUnknown, link)
	n.Holders = append(n.Holders, h)
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

// classifyPathFD handles a descriptor whose link is a path.
func (s *scanner) classifyPathFD(p *Process, h Holder, name, link string, fdDir int, fdinfoOf func(string, bool) (fdinfo, bool)) {
	path := strings.TrimSuffix(link, deletedSuffix)
	deleted := path != link
	var st unix.Stat_t
	statErr := unix.Fstatat(fdDir, name, &st, 0)
	if statErr != nil && isGone(statErr) {
		return // closed meanwhile
	}
	fi, haveInfo := fdinfoOf(name, false)
	if haveInfo {
		h.Flags, h.Access, h.Pos = fi.Flags, accessOf(fi.Flags), fi.Pos
	}
	info := &FileInfo{Path: path, Deleted: deleted, MntID: fi.MntID}
	if statErr == nil {
		info.Type = fileTypeOf(st.Mode)
		info.Mode = st.Mode & 07777
		info.Size = st.Size
		info.Dev = devString(st.Dev)
		info.Inode = st.Ino
		if info.Type == "chr" || info.Type == "blk" {
			info.Rdev = devString(st.Rdev)
		}
	} else {
		info.Type = "unknown"
		s.problem(ProcessID(p.PID), "fd "+name, statErr, false)
		p.Unreadable = append(p.Unreadable, "fd "+name+": "+errString(statErr))
	}

	id, kind, label := "file:"+path, KindFile, path
	switch info.Type {
	case "dir":
		kind = KindDir
	case "fifo":
		kind = KindFIFO
	case "chr", "blk":
		kind = KindDevice
		if info.Type == "chr" && isTTYDev(st.Rdev) {
			kind = KindTTY
			if unix.Major(st.Rdev) == ttyAuxMajor && unix.Minor(st.Rdev) == 2 {
				// Each open of /dev/ptmx is a new pty master.
				fx, _ := fdinfoOf(name, true)
				idx := fx.Extra["tty-index"]
				id = "ptmx:" + idx
				label = "/dev/ptmx (pty " + idx + ")"
			}
		}
	case "regular":
		switch {
		case strings.HasPrefix(path, "/memfd:"):
			kind, id, label = KindMemfd, "memfd:"+strconv.FormatUint(info.Inode, 10), path[1:]
		case strings.HasPrefix(path, "/dev/shm/"):
			kind = KindPosixShm
		}
	}
	n := s.node(id, kind, label)
	if n.File == nil || n.File.Type == "" || n.File.Type == "unknown" {
		written := n.File != nil && n.File.Written
		n.File = info
		n.File.Written = written
	} else if n.File.MntID == 0 {
		n.File.MntID = info.MntID
	}
	if n.Kind != kind && (n.Kind == KindFile || n.Kind == KindUnknown) {
		n.Kind = kind // first seen through a mapping
	}
	if info.Type == "regular" && strings.Contains(h.Access, "w") {
		n.File.Written = true
	}
	n.Holders = append(n.Holders, h)
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
			byNS[u.netns] = map[uint64]bool{}
			nsPid[u.netns] = u.holders[0].PID
		}
		byNS[u.netns][ino] = true
	}
	s.sockDia = make(map[uint64]*diagSock, len(s.sockets))
	s.peers = map[uint64]*diagSock{}
	for ns, want := range byNS {
		res, err := s.collectSockets(nsPid[ns], ns, s.self["net"], want)
		if err != nil {
			s.problem("", "sock_diag", err, false)
		}
		if res == nil {
			continue
		}
		for ino, d := range res.byInode {
			s.sockDia[ino] = d
		}
		for ino, d := range res.unixPeers {
			s.peers[ino] = d
		}
	}
	for ino, u := range s.sockets {
		d := s.sockDia[ino]
		var kind NodeKind
		var info SocketInfo
		if d != nil {
			kind, info = d.kind, d.info
		} else {
			h := u.holders[0]
			proto := sockProtoName(filepath.Join(s.cfg.ProcRoot, strconv.Itoa(h.PID), "fd"), h.FD)
			var fam string
			kind, fam = kindOfProtoName(proto)
			info = SocketInfo{Inode: ino, Family: fam, NetNS: u.netns}
			switch kind {
			case KindTCP:
				info.Protocol = "tcp"
			case KindUDP:
				info.Protocol = "udp"
			}
		}
		ids := strconv.FormatUint(ino, 10)
		n := s.node(string(kind)+":"+ids, kind, socketLabel(kind, &info))
		si := info
		n.Socket = &si
		n.Holders = append(n.Holders, u.holders...)
	}
}

func socketLabel(kind NodeKind, si *SocketInfo) string {
	var b strings.Builder
	b.WriteString(string(kind))
	if si.Type != "" && kind == KindUnix {
		b.WriteString(" " + si.Type)
	}
	if si.State != "" {
		b.WriteString(" " + si.State)
	}
	if si.Local != "" {
		b.WriteString(" " + si.Local)
	}
	if si.Remote != "" {
		b.WriteString(" -> " + si.Remote)
	}
	if !si.Diag {
		b.WriteString(" socket:[" + strconv.FormatUint(si.Inode, 10) + "]")
	}
	return b.String()
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
	inodes := map[string]*Node{}
	for _, n := range s.nodes {
		switch {
		case n.Kind == KindPipe:
			inodes[n.Label] = n // label is "pipe:[ino]"
		case n.Socket != nil:
			inodes["socket:["+strconv.FormatUint(n.Socket.Inode, 10)+"]"] = n
		}
	}
	if len(inodes) == 0 {
		return
	}
	dfd, err := unix.Open(s.cfg.ProcRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.problem("", "process list", err, false)
		return
	}
	defer unix.Close(dfd)
	var pids []int
	if err := s.r.readDirNames(dfd, func(name []byte) {
		if n, ok := atoiBytes(name); ok && s.procs[n] == nil {
			pids = append(pids, n)
		}
	}); err != nil {
		s.problem("", "process list", err, false)
	}
	denied := 0
	var fds []int
	for _, pid := range pids {
		ps := strconv.Itoa(pid)
		fdDir, err := openat(dfd, ps+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
		if err != nil {
			if !isGone(err) {
				denied++
			}
			continue
		}
		fds = fds[:0]
		_ = s.r.readDirNames(fdDir, func(name []byte) {
			if n, ok := atoiBytes(name); ok {
				fds = append(fds, n)
			}
		})
		comm := ""
		for _, fd := range fds {
			name := strconv.Itoa(fd)
			link, err := s.r.readlinkAt(fdDir, name)
			if err != nil || len(link) < 6 || (link[0] != 'p' && link[0] != 's') {
				continue
			}
			n := inodes[link]
			if n == nil {
				continue
			}
			if comm == "" {
				if b, err := s.r.readFileAt(dfd, ps+"/comm"); err == nil {
					comm = strings.TrimSpace(string(b))
				}
			}
			oh := OutsideHolder{PID: pid, Comm: comm, FD: fd, Access: "rw"}
			if n.Kind == KindPipe {
				var st unix.Stat_t
				if unix.Fstatat(fdDir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
					oh.Access = accessOfLinkMode(st.Mode)
				}
			}
			n.Outside = append(n.Outside, oh)
		}
		unix.Close(fdDir)
	}
	if denied > 0 {
		s.problem("", "outside holders", fmt.Errorf("descriptors of %d processes outside the tree: %w", denied, unix.EACCES), false)
	}
}

// finish sorts nodes and edges and fills the Graph.
func (s *scanner) finish() {
	sort.Slice(s.nodes, func(i, j int) bool { return nodeLess(s.nodes[i], s.nodes[j]) })
	s.g.Nodes = make([]Node, len(s.nodes))
	for i, n := range s.nodes {
		sort.Slice(n.Holders, func(a, b int) bool {
			if n.Holders[a].PID != n.Holders[b].PID {
				return n.Holders[a].PID < n.Holders[b].PID
			}
			return n.Holders[a].FD < n.Holders[b].FD
		})
		s.g.Nodes[i] = *n
	}
	s.g.reindex()
	sort.Slice(s.g.Edges, func(i, j int) bool { return edgeLess(&s.g.Edges[i], &s.g.Edges[j]) })
	sort.SliceStable(s.g.Problems, func(i, j int) bool { return s.g.Problems[i].Node < s.g.Problems[j].Node })
}
