// Package introspect reads, from /proc and netlink, what a running
// application is made of and how its parts depend on each other: the
// resource graph of a process tree, whether CRIU can checkpoint it
// (preflight), and a feed of its changes. It needs no CRIU.
//
// # Scanning
//
// Scan (or a reused Scanner) reads the tree rooted at a host PID: the root
// and all its descendants (Config.Scope adds every process of the root's
// PID namespace). For each process it reads stat, status, cmdline, exe,
// cgroup, namespaces, threads, memory mappings (smaps or maps) and every
// file descriptor, which it resolves to a resource: file, directory,
// device, terminal, FIFO, pipe, memfd, POSIX shared memory, socket (TCP,
// UDP and UNIX details from sock_diag netlink in the socket's network
// namespace, not from /proc/net), netlink/packet/raw socket, eventfd,
// signalfd, timerfd, epoll, inotify, fanotify, pidfd, io_uring, bpf or any
// other anonymous inode. It adds the System V IPC objects the tree
// attaches, created or last used (all of them when the tree has its own
// IPC namespace, read from inside it), and, with Config.OutsideHolders,
// the processes outside the tree that hold one of its pipes or sockets.
//
// A process that exits during the scan, or anything that cannot be read
// (an unprivileged caller cannot read another user's descriptors), is
// recorded in Graph.Problems, in Process.Unreadable, and makes the graph
// Partial; nothing is dropped silently. Only a root that does not exist is
// an error (ErrNoProcess).
//
// DefaultConfig reads everything; CheckpointConfig is the scan to run while
// the tree is frozen, which keeps every input of the verdicts and drops
// the costly details (mapping sizes, fdinfo, per-thread stats, command
// lines). Through procfs its cost is dominated by procfs calls: about 1.8
// per descriptor, everything included, once a Scanner keeps its files open
// (TestScanCallBudget bounds it at 2.1), and a rescan lists a process's
// descriptor directory only when their number changed.
//
// As root on a kernel with BTF, a Scanner reads the descriptors of a large
// tree with one pass of a BPF task_file iterator instead (fditer.go): one
// record per descriptor with its link text, open mode and inode,
// for the processes of a pid filter. That takes the scan of a 100-process,
// 5000-descriptor tree from about 60 to about 32 ms of CPU
// (BenchmarkScan/checkpoint against checkpoint-procfs) and from 9 300 to
// 1 000 procfs calls (bounded at 0.25 per descriptor). A pass walks every
// open file of the machine, so it is used only when the tree holds more
// than a twentieth of them; the iterator loads in the background on first
// use (a scan never waits for it), and Config.ProcfsFDs turns it off.
// Scanner.FDSource says which the last scan used; `doppel doctor` says
// whether the iterator can load.
//
// # Graph
//
// A Graph holds Nodes (processes and resources) and Edges (dependencies),
// each resource with a Verdict: ok, warn (works with a condition on
// restore) or blocker (a checkpoint would fail or restore something
// broken), with a one-line reason. The rules mirror CRIU's own checks
// (see verdict.go, which names the CRIU function behind each rule):
// character devices other than the memory devices, tun and terminals,
// block devices, io_uring and unknown anonymous inodes, traced tasks, a
// root that is not a session leader (unless Config.ShellJob), a process
// whose session has no leader in its PID namespace (sid 0), [uprobes] and
// device mappings, UNIX stream connections to a peer outside the tree, and pipes or sockets
// shared with a process outside the tree are blockers; external TCP peers,
// pending TCP connections, files written outside Config.DataPaths, POSIX
// shared memory, SysV IPC outside an own IPC namespace, pipes whose other
// end is outside, deleted open files and consoles are warnings.
// Graph.Preflight lists the findings worst first; Graph.Check turns
// blockers into a *BlockedError wrapping ErrBlocked.
//
// Node IDs are stable across scans so that graphs can be diffed and a user
// interface can keep its state:
//
//	proc:PID              a process of the tree
//	xproc:PID             a process outside the tree holding one of its resources
//	file:PATH             a file, directory, device, terminal, FIFO or POSIX shm object
//	memfd:INODE           a memfd
//	pipe:INODE            an anonymous pipe
//	tcp:INODE, udp:INODE, unix:INODE, netlink:INODE, packet:INODE, raw:INODE, socket:INODE
//	KIND:PID:FD           an anonymous-inode descriptor (eventfd:12:4, io_uring:12:7, ...)
//	ptmx:INDEX            a pty master
//	shmem:INODE           MAP_SHARED|MAP_ANONYMOUS memory
//	sysv-shm:ID, sysv-msg:ID, sysv-sem:ID
//	nsfile:NAME:[INODE]   a namespace file held open
//	peer:PROTO:ADDR:PORT  a network endpoint outside the tree
//
// Edges say why they exist (Edge.Kind, Edge.Reason, and Edge.Via, the
// resource they go through): child (parent to child), holds (process to
// each resource it has open, Reason lists the fds), maps, owns (SysV
// objects), writes (files open for writing or mapped shared writable),
// pipe (writer to reader), socketpair, unix (client to server), tcp (client
// to server, both in the tree), shared-memory and sysv-shm (processes
// mapping the same memory), shares (processes holding the same socket),
// external (process to a peer outside the tree), service (process to a
// socket it listens on) and outside (outside process to the resource it
// shares).
//
// # JSON
//
// A Graph marshals with encoding/json (Graph.WriteJSON indents it). The
// field names are part of the interface and only grow:
//
//	{"root": 1234, "scope": "tree", "time": "...", "scan_ns": 4200000, "partial": false,
//	 "problems": [{"node": "proc:1240", "what": "fds", "error": "permission denied", "vanished": false}],
//	 "nodes": [
//	  {"id": "proc:1234", "kind": "process", "label": "1234 app",
//	   "verdict": {"level": "ok", "reason": ""},
//	   "process": {"pid": 1234, "nspid": [1234, 1], "ppid": 1, "pgid": 1234, "sid": 1234,
//	     "comm": "app", "cmdline": ["app", "-x"], "exe": "/usr/bin/app", "state": "S", "uid": 0,
//	     "tracer_pid": 0, "start_ticks": 150401, "cpu_ns": 120000000, "rss_bytes": 5242880,
//	     "pss_bytes": 2097152, "cgroups": ["0::/app"], "namespaces": {"ipc": 4026531839, "net": 4026531833, ...},
//	     "thread_count": 5, "threads": [{"tid": 1234, "comm": "app", "state": "S", "cpu_ns": 0}],
//	     "mappings": [{"start": 94496436297728, "end": 94496436305920, "perms": "r--p", "offset": 0,
//	       "dev": "fe:00", "inode": 247278, "path": "/usr/bin/app", "kind": "file-private",
//	       "size_bytes": 8192, "rss_bytes": 8192, "pss_bytes": 4096, "dirty_bytes": 0, "swap_bytes": 0,
//	       "resource": ""}],
//	     "map_summary": [{"kind": "anon-private", "count": 12, "size_bytes": 1, "rss_bytes": 1, "dirty_bytes": 1}],
//	     "fd_count": 25, "unreadable": ["fds: permission denied"]}},
//	  {"id": "file:/var/lib/app/db", "kind": "file", "label": "/var/lib/app/db", "verdict": {...},
//	   "file": {"path": "/var/lib/app/db", "deleted": false, "type": "regular", "mode": 420, "size": 4096,
//	     "dev": "254:0", "inode": 1234, "rdev": "", "mnt_id": 24, "written": true, "data_path": "/var/lib/app"},
//	   "holders": [{"pid": 1234, "fd": 7, "access": "rw", "flags": 32770, "pos": 4096}]},
//	  {"id": "tcp:75061", "kind": "tcp", "socket": {"inode": 75061, "family": "inet", "type": "stream",
//	     "protocol": "tcp", "state": "established", "local": "127.0.0.1:57944", "remote": "10.0.0.5:5432",
//	     "peer_inode": 0, "recv_queue": 0, "send_queue": 0, "netns": 4026531833, "diag": true}, ...},
//	  {"id": "sysv-shm:10", "kind": "sysv-shm", "ipc": {"type": "shm", "key": 0, "id": 10, "perms": 384,
//	     "uid": 0, "ipcns": 4026531839, "size_bytes": 1048576, "attached": 2, "removed": true,
//	     "cpid": 1234, "lpid": 1240}, "mappers": [{"pid": 1234, "start": 1, "end": 2, "perms": "rw-s"}]},
//	  {"id": "eventfd:1234:8", "kind": "eventfd", "info": {"eventfd-count": "0"}, ...},
//	  {"id": "peer:tcp:10.0.0.5:5432", "kind": "peer", "peer": {"protocol": "tcp", "address": "10.0.0.5:5432"}},
//	  {"id": "pipe:74623", "kind": "pipe", "outside": [{"pid": 753, "comm": "doppel", "fd": 9, "access": "r"}], ...}],
//	 "edges": [{"from": "proc:1234", "to": "proc:1240", "kind": "pipe", "via": "pipe:75050",
//	   "reason": "1234 writes pipe:[75050] (fd 3 (w)), 1240 reads it (fd 3 (r))"}]}
//
// Preflight findings marshal as {"level", "node", "kind", "label", "reason"}
// and watcher changes as {"op": "added"|"removed"|"changed", "node"|"edge"}.
//
// # Rendering
//
// Graph.WriteText prints the tree for a terminal (each process with its
// descriptors, mappings of shared resources, services and external
// connections, then the dependencies between processes and the preflight
// findings); Graph.WriteDOT prints Graphviz DOT.
//
// # Watching
//
// A Watcher follows a tree and delivers an Update per change: nodes and
// edges added, removed or changed (counters such as CPU time, memory sizes
// and queue lengths do not count as changes; the Update carries the full
// new graph for them). It uses the kernel's process connector (root only)
// for fork, exec and exit, and re-scans every Config.ScanInterval.
package introspect
