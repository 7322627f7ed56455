package introspect

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// edgeSet collects edges without duplicates.
type edgeSet struct {
	g    *Graph
	seen map[edgeKey]int
}

type edgeKey struct {
	kind          EdgeKind
	from, to, via string
}

// addUnique adds an edge known not to be in the set yet.
func (es *edgeSet) addUnique(e Edge) {
	es.g.Edges = append(es.g.Edges, e)
}

func (es *edgeSet) add(e Edge) {
	k := edgeKey{e.Kind, e.From, e.To, e.Via}
	if i, ok := es.seen[k]; ok {
		if e.Reason != "" && !strings.Contains(es.g.Edges[i].Reason, e.Reason) {
			es.g.Edges[i].Reason += "; " + e.Reason
		}
		return
	}
	es.seen[k] = len(es.g.Edges)
	es.g.Edges = append(es.g.Edges, e)
}

// holderPIDs returns the distinct pids of holders, sorted.
func holderPIDs(hs []Holder) []int {
	if len(hs) == 1 {
		return []int{hs[0].PID}
	}
	out := make([]int, 0, 2)
	for _, h := range hs {
		if !slices.Contains(out, h.PID) {
			out = append(out, h.PID)
		}
	}
	sort.Ints(out)
	return out
}

func fdList(hs []Holder, pid int) string {
	var buf [64]byte
	b := buf[:0]
	for _, h := range hs {
		if h.PID != pid {
			continue
		}
		if len(b) > 0 {
			b = append(b, ", "...)
		}
		b = append(b, "fd "...)
		b = strconv.AppendInt(b, int64(h.FD), 10)
		if h.Access != "" {
			b = append(b, " ("...)
			b = append(b, h.Access...)
			b = append(b, ')')
		}
	}
	return string(b)
}

// pid returns the node ID of the tree process p.
func (s *scanner) pid(p int) string {
	if n := s.procs[p]; n != nil {
		return n.ID
	}
	return ProcessID(p)
}

// buildEdges derives the dependency edges from the nodes, in the order the
// scan created them (processes in discovery order, their descriptors by
// number), so that the same tree gives the same edge order.
func (s *scanner) buildEdges() {

	es := &edgeSet{g: s.g, seen: make(map[edgeKey]int, s.sc.last.edges+64)}
	s.g.Edges = make([]Edge, 0, len(s.nodes)*2)
	s.internal = map[string]bool{}

	for _, pid := range s.order {
		p := s.procs[pid].Process
		if s.procs[p.PPID] != nil {
			es.addUnique(Edge{From: s.pid(p.PPID), To: s.pid(pid), Kind: EdgeChild, Reason: "parent of " + strconv.Itoa(pid)})
		}
	}

	// Index inet sockets of the tree for pairing connections, and listening
	// ports for telling the server side.
	type connKey struct {
		ns            uint64
		local, remote string
	}
	inet := map[connKey]*Node{}
	listening := map[string]bool{} // ns|port
	for _, n := range s.nodes {
		if n.Socket == nil || !n.Socket.Diag || (n.Kind != KindTCP && n.Kind != KindUDP) {
			continue
		}
		si := n.Socket
		if si.State == "listen" {
			listening[strconv.FormatUint(si.NetNS, 10)+"|"+portOf(si.Local)] = true
		}
		if si.Remote != "" {
			inet[connKey{si.NetNS, si.Local, si.Remote}] = n
		}
	}

	for _, n := range s.nodes {
		// Who holds it, and who writes it.
		if len(n.Holders) == 1 {
			pid := n.Holders[0].PID
			es.addUnique(Edge{From: s.pid(pid), To: n.ID, Kind: EdgeHolds, Reason: fdList(n.Holders, pid)})
		} else {
			for _, pid := range holderPIDs(n.Holders) {
				es.addUnique(Edge{From: s.pid(pid), To: n.ID, Kind: EdgeHolds, Reason: fdList(n.Holders, pid)})
			}
		}
		if (n.Kind == KindFile || n.Kind == KindPosixShm) && n.File != nil {
			for _, h := range n.Holders {
				if strings.Contains(h.Access, "w") {
					es.add(Edge{From: s.pid(h.PID), To: n.ID, Kind: EdgeWrites,
						Reason: "fd " + strconv.Itoa(h.FD) + " open for writing"})
				}
			}
		}
		// Who maps it.
		var mappers map[int]bool
		var mpids []int
		if len(n.Mappers) > 0 {
			mappers = map[int]bool{}
		}
		for _, m := range n.Mappers {
			es.add(Edge{From: s.pid(m.PID), To: n.ID, Kind: EdgeMaps, Reason: fmt.Sprintf("mapped at %#x-%#x %s", m.Start, m.End, m.Perms)})
			if (n.Kind == KindFile || n.Kind == KindPosixShm) && strings.Contains(m.Perms, "w") && strings.HasSuffix(m.Perms, "s") {
				es.add(Edge{From: s.pid(m.PID), To: n.ID, Kind: EdgeWrites, Reason: fmt.Sprintf("mapped shared writable at %#x", m.Start)})
			}
			if !mappers[m.PID] {
				mappers[m.PID] = true
				mpids = append(mpids, m.PID)
			}
		}
		if len(mpids) > 1 && sharesData(n) {
			sort.Ints(mpids)
			kind := EdgeSharedMemory
			if n.Kind == KindSysVShm {
				kind = EdgeSysVShm
			}
			for _, other := range mpids[1:] {
				es.add(Edge{From: s.pid(mpids[0]), To: s.pid(other), Kind: kind, Via: n.ID, Reason: "both map " + n.Label})
			}
		}

		switch n.Kind {
		case KindPipe, KindFIFO:
			var writers, readers []int
			for _, h := range n.Holders {
				if strings.Contains(h.Access, "w") {
					writers = appendUnique(writers, h.PID)
				}
				if strings.Contains(h.Access, "r") {
					readers = appendUnique(readers, h.PID)
				}
			}
			for _, w := range writers {
				for _, r := range readers {
					if w != r {
						es.add(Edge{From: s.pid(w), To: s.pid(r), Kind: EdgePipe, Via: n.ID,
							Reason: fmt.Sprintf("%d writes %s (%s), %d reads it (%s)", w, n.Label, fdList(onlyAccess(n.Holders, "w"), w), r, fdList(onlyAccess(n.Holders, "r"), r))})
					}
				}
			}
		case KindUnix:
			s.unixEdges(es, n)
		case KindTCP, KindUDP:
			si := n.Socket
			if si == nil || !si.Diag {
				break
			}
			if si.State == "listen" {
				for _, pid := range holderPIDs(n.Holders) {
					es.add(Edge{From: s.pid(pid), To: n.ID, Kind: EdgeService, Reason: si.Protocol + " listens on " + si.Local})
				}
				break
			}
			if si.Remote == "" {
				break
			}
			if peer := inet[connKey{si.NetNS, si.Remote, si.Local}]; peer != nil {
				s.internal[n.ID] = true
				// Both ends in the tree: one edge per connection, from
				// the client to the side whose port is a listener.
				serverIsPeer := listening[strconv.FormatUint(si.NetNS, 10)+"|"+portOf(si.Remote)]
				serverIsSelf := listening[strconv.FormatUint(si.NetNS, 10)+"|"+portOf(si.Local)]
				client, server := n, peer
				if serverIsSelf && !serverIsPeer {
					client, server = peer, n
				} else if serverIsSelf == serverIsPeer && n.ID > peer.ID {
					break // unknown direction: the lower ID side adds it
				}
				if client != n {
					break // the client side adds it
				}
				for _, a := range holderPIDs(client.Holders) {
					for _, b := range holderPIDs(server.Holders) {
						if a != b {
							es.add(Edge{From: s.pid(a), To: s.pid(b), Kind: EdgeTCP, Via: client.ID,
								Reason: fmt.Sprintf("%s %s -> %s %s", si.Protocol, client.Socket.Local, server.Socket.Local, client.Socket.State)})
						}
					}
				}
				break
			}
			pn := s.node("peer:"+si.Protocol+":"+si.Remote, KindPeer, si.Protocol+" "+si.Remote)
			pn.Peer = &PeerInfo{Protocol: si.Protocol, Address: si.Remote}
			for _, pid := range holderPIDs(n.Holders) {
				es.add(Edge{From: s.pid(pid), To: pn.ID, Kind: EdgeExternal, Via: n.ID,
					Reason: fmt.Sprintf("%s %s -> %s %s", si.Protocol, si.Local, si.Remote, si.State)})
			}
		}

		// Sockets held by several processes (inherited listeners, for
		// instance): a star from the lowest pid.
		if n.Socket != nil && len(n.Holders) > 1 {
			if pids := holderPIDs(n.Holders); len(pids) > 1 {
				for _, other := range pids[1:] {
					es.add(Edge{From: s.pid(pids[0]), To: s.pid(other), Kind: EdgeShares, Via: n.ID, Reason: "both hold " + n.Label})
				}
			}
		}

		// SysV objects the tree created or used without mapping them.
		if n.IPC != nil {
			for _, pid := range []int{n.IPC.CPID, n.IPC.LPID, n.IPC.LRPID} {
				if s.procs[pid] != nil && !mappers[pid] {
					es.add(Edge{From: s.pid(pid), To: n.ID, Kind: EdgeOwns, Reason: ownsReason(n.IPC, pid)})
				}
			}
			if n.IPC.CPID == 0 && n.IPC.LPID == 0 && n.IPC.LRPID == 0 && len(n.Mappers) == 0 {
				es.add(Edge{From: s.pid(s.g.Root), To: n.ID, Kind: EdgeOwns, Reason: "in the tree's IPC namespace"})
			}
		}
	}

	// Processes outside the tree that hold a resource of it.
	for _, n := range s.nodes {
		for _, o := range n.Outside {
			xn := s.node("xproc:"+strconv.Itoa(o.PID), KindOutsideProcess, strconv.Itoa(o.PID)+" "+o.Comm+" (outside)")
			if xn.Process == nil {
				xn.Process = &Process{PID: o.PID, Comm: o.Comm}
			}
			es.add(Edge{From: xn.ID, To: n.ID, Kind: EdgeOutside, Reason: fmt.Sprintf("fd %d (%s)", o.FD, o.Access)})
		}
	}
	s.sc.last.edges = len(es.seen)
}

// sharesData reports whether the mappers of n exchange data through it: a
// file mapped shared but read-only by everyone (a system cache) does not
// tie its mappers together.
func sharesData(n *Node) bool {
	if n.Kind != KindFile && n.Kind != KindPosixShm {
		return true
	}
	for _, m := range n.Mappers {
		if strings.Contains(m.Perms, "w") {
			return true
		}
	}
	return false
}

func ownsReason(o *IPCInfo, pid int) string {
	switch {
	case pid == o.CPID:
		return "created it"
	case o.Type == "msg" && pid == o.LRPID:
		return "received from it last"
	case o.Type == "msg":
		return "sent to it last"
	}
	return "attached or detached it last"
}

func (s *scanner) unixEdges(es *edgeSet, n *Node) {
	si := n.Socket
	if si == nil || !si.Diag {
		return
	}
	if si.State == "listen" {
		for _, pid := range holderPIDs(n.Holders) {
			es.add(Edge{From: s.pid(pid), To: n.ID, Kind: EdgeService, Reason: "unix listens on " + si.Local})
		}
		return
	}
	if si.PeerInode == 0 {
		return
	}
	peer := s.byID["unix:"+strconv.FormatUint(si.PeerInode, 10)]
	if peer == nil || peer.Socket == nil {
		return // peer outside the tree: judged, no edge between processes
	}
	mutual := peer.Socket.PeerInode == si.Inode
	if mutual && si.Inode > si.PeerInode {
		return // the pair is added once, from the lower inode
	}
	kind := EdgeUnix
	from, to := n, peer
	if si.Local == "" && peer.Socket.Local == "" {
		kind = EdgeSocketpair
	} else if si.Local != "" && peer.Socket.Local == "" {
		from, to = peer, n // the unnamed end is the client
	}
	for _, a := range holderPIDs(from.Holders) {
		for _, b := range holderPIDs(to.Holders) {
			if a != b {
				es.add(Edge{From: s.pid(a), To: s.pid(b), Kind: kind, Via: from.ID,
					Reason: fmt.Sprintf("unix %s %s <-> %s", si.Type, unixEnd(from.Socket), unixEnd(to.Socket))})
			}
		}
	}
}

func unixEnd(si *SocketInfo) string {
	if si.Local != "" {
		return si.Local
	}
	return "socket:[" + strconv.FormatUint(si.Inode, 10) + "]"
}

func appendUnique(s []int, v int) []int {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

func onlyAccess(hs []Holder, a string) []Holder {
	var out []Holder
	for _, h := range hs {
		if strings.Contains(h.Access, a) {
			out = append(out, h)
		}
	}
	return out
}

// portOf returns the port of "host:port".
func portOf(hp string) string {
	if i := strings.LastIndexByte(hp, ':'); i >= 0 {
		return hp[i+1:]
	}
	return ""
}
