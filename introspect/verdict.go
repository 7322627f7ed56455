package introspect

// The rules below follow what CRIU (4.x) does when it dumps a tree; the
// function or message of CRIU each rule mirrors is named beside it, so a
// rule can be checked against CRIU's source.

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// judge sets the verdict of every node.
func (s *scanner) judge() {
	ptmx := map[string]bool{}
	for _, n := range s.nodes {
		if strings.HasPrefix(n.ID, "ptmx:") {
			ptmx[strings.TrimPrefix(n.ID, "ptmx:")] = true
		}
	}
	for _, n := range s.nodes {
		v := &n.Verdict
		switch n.Kind {
		case KindProcess:
			s.judgeProcess(n)
		case KindFile, KindPosixShm:
			s.judgeFile(n)
		case KindFIFO:
			if n.File != nil && s.cfg.dataPathOf(n.File.Path) == "" {
				// fifo.c reopens the FIFO by its path.
				v.raise(LevelWarn, "named FIFO "+n.File.Path+" is reopened by path: it must exist on the restore node")
			}
		case KindDevice:
			judgeDevice(n)
		case KindTTY:
			judgeTTY(n, ptmx)
		case KindPipe:
			judgePipe(n, s.cfg.OutsideHolders)
		case KindUnix:
			s.judgeUnix(n)
		case KindTCP:
			s.judgeTCP(n)
		case KindUDP:
			judgeUDP(n)
		case KindSocket:
			fam := "unknown"
			if n.Socket != nil {
				fam = n.Socket.Family
			}
			// sockets.c dump_socket: "BUG! Unknown socket collected".
			v.raise(LevelBlocker, "socket family "+fam+": CRIU dumps only unix, inet, inet6, packet and netlink sockets")
		case KindIOUring:
			// files.c dump_one_file: io_uring is not among the anon inodes CRIU dumps.
			v.raise(LevelBlocker, "io_uring instance: CRIU cannot checkpoint io_uring")
		case KindBPF:
			if n.Info["anon_inode"] == "bpf-map" {
				v.raise(LevelWarn, "bpf map: dumped only by a CRIU built with libbpf")
			} else {
				v.raise(LevelBlocker, "bpf "+n.Info["anon_inode"]+": CRIU cannot checkpoint it")
			}
		case KindAnonInode:
			v.raise(LevelBlocker, "anonymous inode ["+n.Info["anon_inode"]+"]: CRIU cannot checkpoint it")
		case KindUnknown:
			v.raise(LevelBlocker, "descriptor "+n.Label+" of a kind CRIU cannot checkpoint")
		case KindSysVShm, KindSysVMsg, KindSysVSem:
			s.judgeSysV(n)
		case KindPeer:
			v.Reason = "endpoint outside the tree"
		case KindOutsideProcess:
			v.Reason = "process outside the tree"
		}
		// A pipe or socket also open in a process outside the tree is
		// cut from it by a checkpoint.
		if n.Socket != nil && len(n.Outside) > 0 {
			v.raise(LevelBlocker, "also held outside the tree by "+outsideList(n.Outside))
		}
	}
}

func (s *scanner) judgeProcess(n *Node) {
	p, v := n.Process, &n.Verdict
	if p.TracerPID != 0 {
		// compel's seize: a task that is already traced cannot be seized.
		v.raise(LevelBlocker, fmt.Sprintf("traced by pid %d (ptrace): CRIU cannot seize a traced task", p.TracerPID))
	}
	if p.SID == 0 {
		// cr-dump.c: "A session leader of %d(%d) is outside of its pid
		// namespace", with or without --shell-job. /proc shows sid 0 when
		// the session's leader is not visible from this PID namespace, and
		// for a descendant of a PID 1 that never called setsid.
		v.raise(LevelBlocker, "its session (sid 0) has no leader in this PID namespace: CRIU cannot dump it; start the app with setsid")
	} else if p.PID == s.g.Root && p.SID != p.PID && !s.cfg.ShellJob {
		// pstree.c dump_pstree: "The root process is not a session leader".
		v.raise(LevelBlocker, fmt.Sprintf("root is not a session leader (sid %d): CRIU refuses without --shell-job; start the app with setsid", p.SID))
	}
	if p.PID == s.g.Root {
		if len(p.NSPID) < 2 || p.NSPID[len(p.NSPID)-1] != 1 {
			v.raise(LevelWarn, "not the init of its own PID namespace: restore needs the same PIDs free on the target")
		}
	}
	for _, m := range p.Mappings {
		switch {
		case m.Path == "[uprobes]":
			// proc_parse.c handle_vma: "has uprobes vma".
			v.raise(LevelBlocker, "has a [uprobes] mapping: CRIU needs --allow-uprobes")
		case m.Kind == MapFilePrivate && strings.HasSuffix(m.Path, deletedSuffix):
			v.raise(LevelWarn, "maps deleted file "+strings.TrimSuffix(m.Path, deletedSuffix)+": CRIU dumps it as a ghost file")
		}
	}
	for _, dm := range s.devMaps {
		if dm.pid != p.PID {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(dm.path, &st); err != nil {
			continue
		}
		if t := st.Mode & unix.S_IFMT; t == unix.S_IFCHR || t == unix.S_IFBLK {
			// proc_parse.c handle_vma: "Can't handle non-regular mapping".
			v.raise(LevelBlocker, "maps device "+dm.path+": CRIU cannot dump a non-regular mapping")
		}
	}
	if p.State == "Z" {
		v.raise(LevelOK, "zombie")
	}
}

func (s *scanner) judgeFile(n *Node) {
	f, v := n.File, &n.Verdict
	if f == nil {
		return
	}
	if dp := s.cfg.dataPathOf(f.Path); dp != "" {
		f.DataPath = dp
	}
	if f.Deleted && len(n.Holders) > 0 {
		// files-reg.c dump_ghost_remap: files past --ghost-limit fail.
		if f.Size > s.cfg.GhostLimit {
			v.raise(LevelBlocker, fmt.Sprintf("deleted file of %d bytes still open: larger than the ghost limit of %d bytes (CRIU --ghost-limit)", f.Size, s.cfg.GhostLimit))
		} else {
			v.raise(LevelWarn, "deleted file still open: CRIU dumps it as a ghost file")
		}
	}
	switch {
	case n.Kind == KindPosixShm && f.DataPath == "":
		v.raise(LevelWarn, "POSIX shared memory "+f.Path+" is a tmpfs file CRIU reopens by path without copying it: add it to the data paths")
	case f.Written && f.DataPath == "" && !f.Deleted && !strings.HasPrefix(f.Path, "/proc/") && !strings.HasPrefix(f.Path, "/sys/"):
		reason := "opened for write outside the data paths: its content is not replicated"
		if len(n.Holders) == 0 {
			reason = "mapped shared writable outside the data paths: its content is not replicated"
		}
		v.raise(LevelWarn, reason)
	case f.Written && f.DataPath != "":
		v.raise(LevelOK, "written, in data path "+f.DataPath)
	}
}

func judgeDevice(n *Node) {
	f, v := n.File, &n.Verdict
	if f == nil || f.Rdev == "" {
		v.raise(LevelWarn, "device of unknown number")
		return
	}
	maj, min := splitDev(f.Rdev)
	if f.Type == "blk" {
		v.raise(LevelBlocker, "block device "+f.Path+" ("+f.Rdev+"): CRIU cannot checkpoint it")
		return
	}
	switch {
	case maj == memMajor:
		// files.c dump_chrdev: MEM_MAJOR devices are reopened by path.
	case maj == miscMajor && (min == tunMinor || min == autofsMinor):
		// files.c get_misc_dev_ops: tun and autofs are supported.
	default:
		// files.c dump_chrdev: anything else is dump_unsupp_fd("chr").
		v.raise(LevelBlocker, "character device "+f.Path+" ("+f.Rdev+"): CRIU cannot checkpoint it")
	}
}

func judgeTTY(n *Node, ptmx map[string]bool) {
	f, v := n.File, &n.Verdict
	if f == nil {
		return
	}
	maj, min := splitDev(f.Rdev)
	switch {
	case maj >= ptySlaveMajor && maj < ptySlaveMajor+8:
		if !ptmx[strconv.FormatUint(uint64(min), 10)] {
			// tty.c tty_verify_active_pairs: "Found slave peer index without correspond master peer".
			v.raise(LevelBlocker, "terminal "+f.Path+" whose pty master is outside the tree: CRIU needs --shell-job")
		}
	case maj == ttyAuxMajor && min == 0:
		v.raise(LevelWarn, "controlling terminal /dev/tty: restore needs a terminal session (--shell-job)")
	case maj == ttyAuxMajor && min == 1, maj == ttyMajor && min >= 1 && min <= 63:
		v.raise(LevelWarn, "console "+f.Path+": restore needs the same terminal on the target")
	case maj == ttyMajor:
		// tty.c get_tty_driver: serial minors of TTY_MAJOR have no driver.
		v.raise(LevelBlocker, "serial line "+f.Path+": CRIU cannot checkpoint it")
	case maj == usbSerialMajor || maj == lowDenseSerMajor:
		v.raise(LevelWarn, "serial line "+f.Path+": restore needs the same device on the target")
	}
}

// outsideList names the first outside holders, "pid 12 (comm) fd 3, ...".
func outsideList(os []OutsideHolder) string {
	var parts []string
	for i, o := range os {
		if i == 2 {
			parts = append(parts, fmt.Sprintf("%d more", len(os)-2))
			break
		}
		parts = append(parts, fmt.Sprintf("pid %d (%s) fd %d", o.PID, o.Comm, o.FD))
	}
	return strings.Join(parts, ", ")
}

func judgePipe(n *Node, outsideScanned bool) {
	v := &n.Verdict
	r, w := false, false
	for _, h := range n.Holders {
		r = r || strings.Contains(h.Access, "r")
		w = w || strings.Contains(h.Access, "w")
	}
	var shared []OutsideHolder
	for _, o := range n.Outside {
		if (r && strings.Contains(o.Access, "r")) || (w && strings.Contains(o.Access, "w")) {
			shared = append(shared, o)
		}
	}
	if len(shared) > 0 {
		v.raise(LevelBlocker, "pipe end also held outside the tree by "+outsideList(shared))
		return
	}
	if len(n.Outside) > 0 {
		o := n.Outside[0]
		v.raise(LevelWarn, fmt.Sprintf("other end held by pid %d (%s) outside the tree: restore must hand a new pipe in (--inherit-fd)", o.PID, o.Comm))
		return
	}
	if r != w {
		end := "read"
		if w {
			end = "write"
		}
		if outsideScanned {
			v.raise(LevelOK, "only the "+end+" end is open")
		} else {
			v.raise(LevelWarn, "only the "+end+" end is in the tree; the other may be outside")
		}
	}
}

func (s *scanner) judgeUnix(n *Node) {
	si, v := n.Socket, &n.Verdict
	if si == nil || !si.Diag {
		v.raise(LevelWarn, "sock_diag did not report this UNIX socket: not judged")
		return
	}
	switch si.Type {
	case "stream", "dgram", "seqpacket":
	default:
		// sk-unix.c can_dump_unix_sk.
		v.raise(LevelBlocker, "unix socket of type "+si.Type+": CRIU dumps only stream, dgram and seqpacket")
		return
	}
	switch si.State {
	case "listen", "established", "unconnected":
	default:
		v.raise(LevelBlocker, "unix socket in state "+si.State+": CRIU cannot dump it")
		return
	}
	if si.PeerInode == 0 || s.byID["unix:"+strconv.FormatUint(si.PeerInode, 10)] != nil {
		return
	}
	peerName := ""
	if p := s.peers[si.PeerInode]; p != nil {
		peerName = p.info.Local
	}
	// sk-unix.c __dump_external_socket.
	switch {
	case si.Type != "dgram":
		v.raise(LevelBlocker, fmt.Sprintf("connected to a peer outside the tree (%s): CRIU cannot dump half of a %s UNIX connection", unixPeerDesc(peerName, si.PeerInode), si.Type))
	case peerName == "":
		v.raise(LevelBlocker, fmt.Sprintf("datagram socket connected to a nameless peer outside the tree (socket:[%d]): CRIU cannot dump it", si.PeerInode))
	default:
		v.raise(LevelWarn, "datagram socket connected to "+peerName+" outside the tree: dump and restore need --ext-unix-sk, and the peer must exist on the target")
	}
}

func unixPeerDesc(name string, ino uint64) string {
	if name != "" {
		return name
	}
	return "socket:[" + strconv.FormatUint(ino, 10) + "]"
}

func (s *scanner) judgeTCP(n *Node) {
	si, v := n.Socket, &n.Verdict
	if si == nil || !si.Diag {
		v.raise(LevelWarn, "sock_diag did not report this TCP socket: not judged")
		return
	}
	// sk-inet.c can_dump_inet_sk.
	switch si.State {
	case "listen":
		if si.RecvQueue > 0 {
			v.raise(LevelWarn, fmt.Sprintf("%d connection(s) not yet accepted: CRIU fails unless --tcp-skip-in-flight", si.RecvQueue))
		}
	case "close":
	case "established", "fin-wait1", "fin-wait2", "close-wait", "last-ack", "closing", "syn-sent":
		internal := s.internal[n.ID]
		if internal {
			v.raise(LevelOK, "connection inside the tree (dumped with --tcp-established)")
		} else {
			v.raise(LevelWarn, fmt.Sprintf("connected to %s outside the tree: restore needs the same local address %s and --tcp-established", si.Remote, si.Local))
		}
		if si.State != "established" {
			v.raise(LevelWarn, "connection in state "+si.State)
		}
	default:
		v.raise(LevelBlocker, "TCP socket in state "+si.State+": CRIU cannot dump it")
	}
}

func judgeUDP(n *Node) {
	si, v := n.Socket, &n.Verdict
	if si == nil || !si.Diag {
		v.raise(LevelWarn, "sock_diag did not report this UDP socket: not judged")
		return
	}
	// sk-inet.c can_dump_inet_sk: corked sockets with data fail, queued
	// data is dropped.
	if si.SendQueue > 0 {
		v.raise(LevelWarn, fmt.Sprintf("%d bytes in the send queue: CRIU fails on a corked socket", si.SendQueue))
	}
	if si.RecvQueue > 0 {
		v.raise(LevelWarn, fmt.Sprintf("%d bytes in the receive queue are dropped by a checkpoint", si.RecvQueue))
	}
}

func (s *scanner) judgeSysV(n *Node) {
	v := &n.Verdict
	if n.IPC == nil {
		return
	}
	if n.IPC.IPCNS == 0 && n.IPC.Size == 0 && n.IPC.Type == "shm" {
		v.raise(LevelWarn, "mapped SysV segment not found in /proc/sysvipc: not judged")
		return
	}
	if n.IPC.IPCNS == s.self["ipc"] {
		// CRIU dumps SysV IPC objects only as part of an IPC namespace
		// (ipc_ns.c dump_ipc_ns).
		v.raise(LevelWarn, "SysV IPC object of the host IPC namespace: CRIU checkpoints SysV IPC only with an IPC namespace of the app, so it will be missing after restore")
	}
}

// splitDev parses "major:minor".
func splitDev(s string) (uint32, uint32) {
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return 0, 0
	}
	a, _ := strconv.ParseUint(s[:i], 10, 32)
	b, _ := strconv.ParseUint(s[i+1:], 10, 32)
	return uint32(a), uint32(b)
}
