package introspect

import (
	"cmp"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// NodeKind says what a node of the resource graph stands for. The values are
// part of the JSON format and never change meaning.
type NodeKind string

// Node kinds. Processes come first; every other kind is a resource that one
// or more processes of the tree hold (through a file descriptor), map, or own.
const (
	KindProcess        NodeKind = "process"         // a process of the tree (its threads and mappings are inside)
	KindOutsideProcess NodeKind = "outside-process" // a process outside the tree that shares a resource with it
	KindPeer           NodeKind = "peer"            // a network endpoint outside the tree
	KindFile           NodeKind = "file"            // regular file
	KindDir            NodeKind = "dir"             // directory
	KindDevice         NodeKind = "device"          // character or block device other than a terminal
	KindTTY            NodeKind = "tty"             // terminal: pty master or slave, console, virtual terminal, serial line
	KindFIFO           NodeKind = "fifo"            // named pipe
	KindPipe           NodeKind = "pipe"            // anonymous pipe
	KindMemfd          NodeKind = "memfd"           // memfd_create(2) file
	KindPosixShm       NodeKind = "posix-shm"       // file under /dev/shm (shm_open(3))
	KindSharedAnon     NodeKind = "shared-anon"     // MAP_SHARED|MAP_ANONYMOUS memory
	KindUnix           NodeKind = "unix"            // AF_UNIX socket
	KindTCP            NodeKind = "tcp"             // TCP socket (IPv4 or IPv6)
	KindUDP            NodeKind = "udp"             // UDP socket (IPv4 or IPv6)
	KindRawSocket      NodeKind = "raw"             // raw IP socket
	KindNetlink        NodeKind = "netlink"         // AF_NETLINK socket
	KindPacket         NodeKind = "packet"          // AF_PACKET socket
	KindSocket         NodeKind = "socket"          // socket of another family
	KindEventfd        NodeKind = "eventfd"
	KindSignalfd       NodeKind = "signalfd"
	KindTimerfd        NodeKind = "timerfd"
	KindEpoll          NodeKind = "epoll"
	KindInotify        NodeKind = "inotify"
	KindFanotify       NodeKind = "fanotify"
	KindPidfd          NodeKind = "pidfd"
	KindIOUring        NodeKind = "io_uring"
	KindBPF            NodeKind = "bpf"        // bpf map, program or link
	KindAnonInode      NodeKind = "anon-inode" // any other anonymous inode (userfaultfd, perf_event, ...)
	KindNSFile         NodeKind = "nsfile"     // a namespace file (/proc/PID/ns/*) held open
	KindSysVShm        NodeKind = "sysv-shm"
	KindSysVMsg        NodeKind = "sysv-msg"
	KindSysVSem        NodeKind = "sysv-sem"
	KindUnknown        NodeKind = "unknown" // a descriptor the kernel describes in a way not known here
)

// EdgeKind says why an edge exists. The values are part of the JSON format.
type EdgeKind string

// Edge kinds. Edges between two processes have both ends of kind
// KindProcess; the others go from a process to a resource (or, for
// EdgeOutside, from an outside process to a resource).
const (
	EdgeChild        EdgeKind = "child"         // parent process -> child process
	EdgeHolds        EdgeKind = "holds"         // process -> resource it has open (Reason lists the fds)
	EdgeMaps         EdgeKind = "maps"          // process -> shared memory or file it maps
	EdgeOwns         EdgeKind = "owns"          // process -> SysV object it created or last used
	EdgePipe         EdgeKind = "pipe"          // writer process -> reader process, Via the pipe or FIFO
	EdgeSocketpair   EdgeKind = "socketpair"    // process <-> process joined by an unnamed connected UNIX socket pair
	EdgeUnix         EdgeKind = "unix"          // client process -> server process of a UNIX connection
	EdgeTCP          EdgeKind = "tcp"           // client process -> server process of a TCP connection inside the tree
	EdgeSharedMemory EdgeKind = "shared-memory" // processes mapping the same shared memory or file MAP_SHARED
	EdgeSysVShm      EdgeKind = "sysv-shm"      // processes attaching the same SysV shared memory segment
	EdgeShares       EdgeKind = "shares"        // processes holding the same socket
	EdgeWrites       EdgeKind = "writes"        // process -> file it has open for writing or maps shared writable
	EdgeExternal     EdgeKind = "external"      // process -> peer outside the tree (network connection)
	EdgeService      EdgeKind = "service"       // process -> socket it listens on
	EdgeOutside      EdgeKind = "outside"       // outside process -> resource of the tree it also holds
)

// Level grades how a resource affects replication of the tree.
type Level string

// Verdict levels, from harmless to fatal.
const (
	LevelOK      Level = "ok"      // checkpointed and restored as is
	LevelWarn    Level = "warn"    // works, with a condition on restore or a loss the operator should know
	LevelBlocker Level = "blocker" // a checkpoint of the tree would fail or restore something broken
)

// Rank orders levels: 0 for ok, 1 for warn, 2 for blocker.
func (l Level) Rank() int {
	switch l {
	case LevelBlocker:
		return 2
	case LevelWarn:
		return 1
	default:
		return 0
	}
}

// Verdict is the replicability of one node with a one-line reason.
type Verdict struct {
	Level  Level  `json:"level"`
	Reason string `json:"reason,omitempty"`
}

// raise makes v at least as severe as level, keeping every reason given at
// the resulting level.
func (v *Verdict) raise(level Level, reason string) {
	switch {
	case v.Level == "" || level.Rank() > v.Level.Rank():
		v.Level, v.Reason = level, reason
	case level == v.Level && reason != "" && !strings.Contains(v.Reason, reason):
		if v.Reason == "" {
			v.Reason = reason
		} else {
			v.Reason += "; " + reason
		}
	}
}

// Graph is the resource and dependency graph of one process tree at one
// moment. A Graph is a value: nothing in the package changes it after Scan
// returns, and it is safe to read from several goroutines.
type Graph struct {
	Root     int           `json:"root"`
	Scope    Scope         `json:"scope"`
	Time     time.Time     `json:"time"`
	Duration time.Duration `json:"scan_ns"`
	// Partial is true when part of the tree could not be read: a process
	// exited during the scan or a file was unreadable. Problems says what.
	Partial  bool      `json:"partial"`
	Problems []Problem `json:"problems,omitempty"`
	// Nodes are ordered: processes by pid, then resources by kind and ID.
	Nodes []*Node `json:"nodes"`
	// Edges come in a fixed order for a given tree: parent/child edges
	// first, then the edges of each resource in the order the scan found
	// them.
	Edges []Edge `json:"edges"`

	index map[string]*Node
}

// Problem records something the scan could not read.
type Problem struct {
	Node     string `json:"node,omitempty"` // the node concerned, if any
	What     string `json:"what"`           // what was being read: "fds", "maps", "sock_diag", ...
	Err      string `json:"error"`
	Vanished bool   `json:"vanished,omitempty"` // the process exited during the scan
}

// Node is one process or resource. Exactly one of the detail pointers
// matching Kind is set (none for anonymous-inode kinds, whose details are in
// Info).
type Node struct {
	ID      string   `json:"id"`
	Kind    NodeKind `json:"kind"`
	Label   string   `json:"label"`
	Verdict Verdict  `json:"verdict"`

	Process *Process    `json:"process,omitempty"`
	File    *FileInfo   `json:"file,omitempty"`
	Socket  *SocketInfo `json:"socket,omitempty"`
	IPC     *IPCInfo    `json:"ipc,omitempty"`
	Peer    *PeerInfo   `json:"peer,omitempty"`
	// Info holds kind-specific key/values the kernel reports in fdinfo
	// (eventfd-count, tfd count of an epoll, tty-index, ...).
	Info map[string]string `json:"info,omitempty"`

	Holders []Holder        `json:"holders,omitempty"` // descriptors of tree processes that refer to this resource
	Mappers []Mapper        `json:"mappers,omitempty"` // mappings of tree processes backed by this resource
	Outside []OutsideHolder `json:"outside,omitempty"` // descriptors of processes outside the tree that refer to it
}

// Holder is one file descriptor of a tree process that refers to a resource.
type Holder struct {
	PID    int    `json:"pid"`
	FD     int    `json:"fd"`
	Access string `json:"access"`          // "r", "w", "rw", or "" when unknown (O_PATH)
	Flags  uint32 `json:"flags,omitempty"` // open(2) flags from fdinfo
	Pos    int64  `json:"pos,omitempty"`   // file offset from fdinfo
}

// Mapper is one mapping of a tree process backed by a shared resource.
type Mapper struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
	Perms string `json:"perms"`
}

// OutsideHolder is a descriptor of a process outside the tree that refers to
// a resource of the tree.
type OutsideHolder struct {
	PID    int    `json:"pid"`
	Comm   string `json:"comm"`
	FD     int    `json:"fd"`
	Access string `json:"access"`
}

// Process describes one process of the tree.
type Process struct {
	PID         int               `json:"pid"`
	NSPID       []int             `json:"nspid,omitempty"` // NSpid of /proc/PID/status: host pid first, innermost namespace last
	PPID        int               `json:"ppid"`
	PGID        int               `json:"pgid"`
	SID         int               `json:"sid"`
	Comm        string            `json:"comm"`
	Cmdline     []string          `json:"cmdline,omitempty"`
	Exe         string            `json:"exe,omitempty"`
	State       string            `json:"state"` // one letter, as in /proc/PID/stat
	UID         int               `json:"uid"`
	TracerPID   int               `json:"tracer_pid,omitempty"`
	StartTicks  uint64            `json:"start_ticks"` // start time in clock ticks after boot; tells a reused pid apart
	CPUTime     time.Duration     `json:"cpu_ns"`      // user plus system time of all threads
	RSS         uint64            `json:"rss_bytes"`
	PSS         uint64            `json:"pss_bytes,omitempty"` // only when Config.MapSizes
	Cgroups     []string          `json:"cgroups,omitempty"`   // lines of /proc/PID/cgroup
	Namespaces  map[string]uint64 `json:"namespaces,omitempty"`
	ThreadCount int               `json:"thread_count"`
	Threads     []Thread          `json:"threads,omitempty"` // only with Config.Threads
	Mappings    []Mapping         `json:"mappings,omitempty"`
	MapSummary  []MapSummary      `json:"map_summary,omitempty"`
	FDCount     int               `json:"fd_count"`
	// Unreadable lists what could not be read about this process, as
	// "what: error"; nothing is dropped silently.
	Unreadable []string `json:"unreadable,omitempty"`
}

// Thread is one thread of a process.
type Thread struct {
	TID     int           `json:"tid"`
	Comm    string        `json:"comm"`
	State   string        `json:"state"`
	CPUTime time.Duration `json:"cpu_ns"`
}

// MapKind classifies a memory mapping.
type MapKind string

// Mapping kinds.
const (
	MapAnonPrivate MapKind = "anon-private"
	MapAnonShared  MapKind = "anon-shared"
	MapFilePrivate MapKind = "file-private"
	MapFileShared  MapKind = "file-shared"
	MapStack       MapKind = "stack"
	MapHeap        MapKind = "heap"
	MapVDSO        MapKind = "vdso"
	MapVVAR        MapKind = "vvar"
	MapVsyscall    MapKind = "vsyscall"
	MapSysVShm     MapKind = "sysv-shm"
	MapMemfd       MapKind = "memfd"
	MapSpecial     MapKind = "special" // [uprobes], [aio] and other kernel mappings
)

// Mapping is one line of /proc/PID/smaps (or maps).
type Mapping struct {
	Start  uint64  `json:"start"`
	End    uint64  `json:"end"`
	Perms  string  `json:"perms"`
	Offset uint64  `json:"offset"`
	Dev    string  `json:"dev"`
	Inode  uint64  `json:"inode"`
	Path   string  `json:"path,omitempty"`
	Kind   MapKind `json:"kind"`
	Size   uint64  `json:"size_bytes"`
	RSS    uint64  `json:"rss_bytes"`   // 0 unless Config.MapSizes
	PSS    uint64  `json:"pss_bytes"`   // 0 unless Config.MapSizes
	Dirty  uint64  `json:"dirty_bytes"` // private plus shared dirty; 0 unless Config.MapSizes
	Swap   uint64  `json:"swap_bytes"`  // 0 unless Config.MapSizes
	// Resource is the node ID of the shared resource backing the mapping.
	Resource string `json:"resource,omitempty"`
}

// MapSummary totals the mappings of one kind in a process.
type MapSummary struct {
	Kind  MapKind `json:"kind"`
	Count int     `json:"count"`
	Size  uint64  `json:"size_bytes"`
	RSS   uint64  `json:"rss_bytes"`
	Dirty uint64  `json:"dirty_bytes"`
}

// FileInfo describes a filesystem object: a file, directory, device, FIFO,
// memfd or POSIX shared memory object.
type FileInfo struct {
	Path    string `json:"path"`
	Deleted bool   `json:"deleted,omitempty"`
	Type    string `json:"type"` // regular, dir, chr, blk, fifo, socket, symlink
	Mode    uint32 `json:"mode"` // permission bits
	Size    int64  `json:"size"`
	Dev     string `json:"dev"` // major:minor of the filesystem
	Inode   uint64 `json:"inode"`
	Rdev    string `json:"rdev,omitempty"` // major:minor of a device
	MntID   int    `json:"mnt_id,omitempty"`
	Written bool   `json:"written"` // a tree process has it open for writing or maps it shared writable
	// DataPath is the entry of Config.DataPaths the file lies under, if any.
	DataPath string `json:"data_path,omitempty"`
}

// SocketInfo describes a socket as sock_diag reports it.
type SocketInfo struct {
	Inode     uint64 `json:"inode"`
	Family    string `json:"family"`             // unix, inet, inet6, netlink, packet, ...
	Type      string `json:"type,omitempty"`     // stream, dgram, seqpacket, raw
	Protocol  string `json:"protocol,omitempty"` // tcp, udp
	State     string `json:"state,omitempty"`    // listen, established, unconnected, close-wait, ...
	Local     string `json:"local,omitempty"`    // ip:port, or a UNIX path ("@name" for an abstract one)
	Remote    string `json:"remote,omitempty"`
	PeerInode uint64 `json:"peer_inode,omitempty"` // UNIX peer
	RecvQueue uint32 `json:"recv_queue"`
	SendQueue uint32 `json:"send_queue"`
	NetNS     uint64 `json:"netns"`
	// Diag is false when sock_diag did not report the socket; the family
	// then comes from the socket's xattr and the other fields are empty.
	Diag bool `json:"diag"`
}

// IPCInfo describes a System V IPC object.
type IPCInfo struct {
	Type     string `json:"type"` // shm, msg, sem
	Key      int32  `json:"key"`
	ID       int    `json:"id"`
	Perms    uint32 `json:"perms"`
	UID      int    `json:"uid"`
	IPCNS    uint64 `json:"ipcns"`
	Size     uint64 `json:"size_bytes,omitempty"` // shm
	Attached int    `json:"attached,omitempty"`   // shm nattch
	Removed  bool   `json:"removed,omitempty"`    // shm marked for removal (IPC_RMID)
	CPID     int    `json:"cpid,omitempty"`       // shm creator
	LPID     int    `json:"lpid,omitempty"`       // shm last attach/detach; msg last send
	LRPID    int    `json:"lrpid,omitempty"`      // msg last receive
	Messages uint64 `json:"messages,omitempty"`   // msg qnum
	Bytes    uint64 `json:"bytes,omitempty"`      // msg cbytes
	NSems    int    `json:"nsems,omitempty"`      // sem
}

// PeerInfo is a network endpoint outside the tree.
type PeerInfo struct {
	Protocol string `json:"protocol"`
	Address  string `json:"address"`
}

// Edge is one dependency. From and To are node IDs.
type Edge struct {
	From   string   `json:"from"`
	To     string   `json:"to"`
	Kind   EdgeKind `json:"kind"`
	Via    string   `json:"via,omitempty"` // the resource node the dependency goes through
	Reason string   `json:"reason"`
}

// Key identifies an edge across scans.
func (e Edge) Key() string {
	return string(e.Kind) + "|" + e.From + "|" + e.To + "|" + e.Via
}

// Node returns the node with the given ID, or nil. Graphs from Scan are
// indexed; others (decoded from JSON, built by hand) are searched unless
// BuildIndex was called.
func (g *Graph) Node(id string) *Node {
	if g.index != nil {
		return g.index[id]
	}
	for _, n := range g.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// BuildIndex indexes the nodes of a graph that did not come from Scan (one
// decoded from JSON, for instance) so that Node is fast. It must not run
// concurrently with other methods.
func (g *Graph) BuildIndex() {
	g.index = make(map[string]*Node, len(g.Nodes))
	for _, n := range g.Nodes {
		g.index[n.ID] = n
	}
}

// Processes returns the process nodes of the tree in pid order.
func (g *Graph) Processes() []*Node {
	var out []*Node
	for _, n := range g.Nodes {
		if n.Kind == KindProcess {
			out = append(out, n)
		}
	}
	return out
}

// EdgesOf returns the edges that start or end at the node id.
func (g *Graph) EdgesOf(id string) []Edge {
	var out []Edge
	for _, e := range g.Edges {
		if e.From == id || e.To == id {
			out = append(out, e)
		}
	}
	return out
}

// ProcessID is the node ID of the tree process pid.
func ProcessID(pid int) string { return "proc:" + strconv.Itoa(pid) }

// Finding is one non-ok verdict, as Preflight reports it.
type Finding struct {
	Level  Level    `json:"level"`
	Node   string   `json:"node"`
	Kind   NodeKind `json:"kind"`
	Label  string   `json:"label"`
	Reason string   `json:"reason"`
}

func (f Finding) String() string {
	return fmt.Sprintf("%s %s (%s): %s", f.Level, f.Node, f.Label, f.Reason)
}

// Preflight lists every node whose verdict is not ok, and every problem of
// the scan as a warning (what could not be read could not be judged),
// worst first, then by node ID.
func (g *Graph) Preflight() []Finding {
	var out []Finding
	for _, n := range g.Nodes {
		if n.Verdict.Level.Rank() == 0 {
			continue
		}
		out = append(out, Finding{Level: n.Verdict.Level, Node: n.ID, Kind: n.Kind, Label: n.Label, Reason: n.Verdict.Reason})
	}
	for _, p := range g.Problems {
		f := Finding{Level: LevelWarn, Node: p.Node, Reason: "unreadable " + p.What + ": " + p.Err}
		if p.Vanished {
			f.Reason = "exited during the scan"
		}
		if n := g.Node(p.Node); n != nil {
			f.Kind, f.Label = n.Kind, n.Label
		}
		out = append(out, f)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if a, b := out[i].Level.Rank(), out[j].Level.Rank(); a != b {
			return a > b
		}
		return out[i].Node < out[j].Node
	})
	return out
}

// ErrBlocked is wrapped by the error Check returns when the tree holds a
// resource that cannot be checkpointed.
var ErrBlocked = errors.New("introspect: tree cannot be checkpointed")

// BlockedError lists the blockers that make a tree impossible to checkpoint.
type BlockedError struct {
	Blockers []Finding
}

func (e *BlockedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: %d blocker(s)", ErrBlocked, len(e.Blockers))
	for i, f := range e.Blockers {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Blockers)-3)
			break
		}
		fmt.Fprintf(&b, "; %s (%s): %s", f.Node, f.Label, f.Reason)
	}
	return b.String()
}

func (e *BlockedError) Unwrap() error { return ErrBlocked }

// Check returns nil when no node is a blocker, else a *BlockedError (which
// wraps ErrBlocked) naming each blocking resource.
func (g *Graph) Check() error {
	var bl []Finding
	for _, f := range g.Preflight() {
		if f.Level == LevelBlocker {
			bl = append(bl, f)
		}
	}
	if len(bl) == 0 {
		return nil
	}
	return &BlockedError{Blockers: bl}
}

// nodeCmp orders processes first by pid, then other nodes by kind and ID.
func nodeCmp(a, b *Node) int {
	ap, bp := a.Kind == KindProcess, b.Kind == KindProcess
	switch {
	case ap && !bp:
		return -1
	case bp && !ap:
		return 1
	case ap:
		return cmp.Compare(a.Process.PID, b.Process.PID)
	}
	if c := strings.Compare(string(a.Kind), string(b.Kind)); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}
