package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// diagSock is one socket as sock_diag reported it.
type diagSock struct {
	kind NodeKind
	info SocketInfo
}

// netnsSockets holds the sock_diag view of one network namespace.
type netnsSockets struct {
	byInode map[uint64]*diagSock
	// unixPeers holds UNIX sockets outside the wanted set that a wanted
	// socket is connected to, so their name can be judged.
	unixPeers map[uint64]*diagSock
}

var tcpStates = [...]string{
	1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait1", 5: "fin-wait2",
	6: "time-wait", 7: "close", 8: "close-wait", 9: "last-ack", 10: "listen", 11: "closing", 12: "new-syn-recv",
}

func stateName(kind NodeKind, st uint8) string {
	switch kind {
	case KindUnix:
		switch st {
		case 1:
			return "established"
		case 7:
			return "unconnected"
		case 10:
			return "listen"
		}
	case KindUDP:
		switch st {
		case 1:
			return "connected"
		case 7:
			return "unconnected"
		}
	}
	if int(st) < len(tcpStates) && tcpStates[st] != "" {
		return tcpStates[st]
	}
	return "state-" + strconv.Itoa(int(st))
}

func sockTypeName(t uint8) string {
	switch t {
	case unix.SOCK_STREAM:
		return "stream"
	case unix.SOCK_DGRAM:
		return "dgram"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	case unix.SOCK_RAW:
		return "raw"
	}
	return "type-" + strconv.Itoa(int(t))
}

func hostPort(ip net.IP, port uint16) string {
	return net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))
}

// unixName renders a UNIX socket address: a path, or "@name" for the
// abstract namespace.
func unixName(n string) string {
	if n != "" && n[0] == 0 {
		return "@" + n[1:]
	}
	return strings.TrimRight(n, "\x00")
}

// collectSockets asks sock_diag of the network namespace of pid for TCP,
// UDP and UNIX sockets and keeps those in want (plus the UNIX peers of
// wanted sockets). The replies are parsed in place: a dump covers every
// socket of the namespace and most are not the tree's.
func (s *scanner) collectSockets(pid int, nsIno uint64, selfNet uint64, want map[uint64]bool) (*netnsSockets, error) {
	ns := netns.None()
	if nsIno != selfNet && nsIno != 0 {
		h, err := netns.GetFromPath(filepath.Join(s.cfg.ProcRoot, strconv.Itoa(pid), "ns", "net"))
		if err != nil {
			return nil, fmt.Errorf("open network namespace of pid %d: %w", pid, err)
		}
		defer h.Close()
		ns = h
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer sock.Close()
	dc := &diagConn{fd: sock.GetFd(), buf: s.sc.diagBuf()}

	out := &netnsSockets{byInode: make(map[uint64]*diagSock, len(want)), unixPeers: map[uint64]*diagSock{}}
	var errs []error
	dump := func(what string, req []byte, fn func(msg []byte)) {
		// A dump interrupted by concurrent socket changes is retried
		// once; a second interruption keeps what was read.
		intr, err := dc.dump(req, fn)
		if err == nil && intr {
			_, err = dc.dump(req, fn)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	for _, q := range []struct {
		what  string
		fam   uint8
		proto uint8
		kind  NodeKind
	}{
		{"tcp4", unix.AF_INET, unix.IPPROTO_TCP, KindTCP},
		{"tcp6", unix.AF_INET6, unix.IPPROTO_TCP, KindTCP},
		{"udp4", unix.AF_INET, unix.IPPROTO_UDP, KindUDP},
		{"udp6", unix.AF_INET6, unix.IPPROTO_UDP, KindUDP},
	} {
		dump(q.what, inetDiagReq(q.fam, q.proto), func(msg []byte) {
			if d := parseInetDiagMsg(msg, want, q.kind, nsIno); d != nil {
				out.byInode[d.info.Inode] = d
			}
		})
	}
	// UNIX: keep the wanted sockets, and the names of the others, which
	// may be the peers of wanted ones.
	var wanted []*diagSock
	names := map[uint64]*diagSock{}
	dump("unix", unixDiagReq{}.Serialize(), func(msg []byte) {
		if len(msg) < sizeofUnixDiagMs {
			return
		}
		ino := uint64(binary.NativeEndian.Uint32(msg[4:]))
		if !want[ino] {
			if d := parseUnixDiagMsg(msg, nsIno); d != nil && d.info.Local != "" {
				names[ino] = d
			}
			return
		}
		if d := parseUnixDiagMsg(msg, nsIno); d != nil {
			wanted = append(wanted, d)
			out.byInode[ino] = d
		}
	})
	for _, d := range wanted {
		p := d.info.PeerInode
		if p == 0 {
			continue
		}
		if pd := out.byInode[p]; pd != nil {
			d.info.Remote = pd.info.Local
		} else if pd := names[p]; pd != nil {
			d.info.Remote = pd.info.Local
			out.unixPeers[p] = pd
		} else {
			out.unixPeers[p] = &diagSock{kind: KindUnix, info: SocketInfo{Inode: p, Family: "unix"}}
		}
	}
	return out, errors.Join(errs...)
}

// diagBuf returns the Scanner's sock_diag receive buffer.
func (sc *Scanner) diagBuf() []byte {
	if sc.dbuf == nil {
		sc.dbuf = make([]byte, 64<<10)
	}
	return sc.dbuf
}

// diagConn runs sock_diag dumps on a NETLINK_SOCK_DIAG socket.
type diagConn struct {
	fd  int
	buf []byte
	seq uint32
}

// nlmFDumpIntr is NLM_F_DUMP_INTR: the dump changed while it was read.
const nlmFDumpIntr = 0x10

// dump sends a SOCK_DIAG_BY_FAMILY dump request with payload req and calls
// fn with the payload of each reply.
func (c *diagConn) dump(req []byte, fn func(msg []byte)) (interrupted bool, err error) {
	ne := binary.NativeEndian
	c.seq++
	msg := make([]byte, unix.SizeofNlMsghdr+len(req))
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], nl.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(msg[8:], c.seq)
	copy(msg[unix.SizeofNlMsghdr:], req)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, err
	}
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return interrupted, err
		}
		b := c.buf[:n]
		for len(b) >= unix.SizeofNlMsghdr {
			l := int(ne.Uint32(b[0:]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return interrupted, fmt.Errorf("sock_diag: malformed reply")
			}
			typ, flags, seq := ne.Uint16(b[4:]), ne.Uint16(b[6:]), ne.Uint32(b[8:])
			body := b[unix.SizeofNlMsghdr:l]
			b = b[nlmsgAlign(l):]
			if seq != c.seq {
				continue
			}
			if flags&nlmFDumpIntr != 0 {
				interrupted = true
			}
			switch typ {
			case unix.NLMSG_DONE:
				return interrupted, nil
			case unix.NLMSG_ERROR:
				if len(body) >= 4 {
					if e := int32(ne.Uint32(body)); e < 0 {
						return interrupted, unix.Errno(-e)
					}
				}
				return interrupted, nil
			default:
				fn(body)
			}
		}
	}
}

// inetDiagReq is struct inet_diag_req_v2 asking for every socket of a
// family and protocol, in every state.
func inetDiagReq(family, proto uint8) []byte {
	b := make([]byte, 56)
	b[0], b[1] = family, proto
	binary.NativeEndian.PutUint32(b[4:], ^uint32(0))
	return b
}

// parseInetDiagMsg decodes a struct inet_diag_msg when its inode is
// wanted; it returns nil otherwise, before allocating anything.
func parseInetDiagMsg(msg []byte, want map[uint64]bool, kind NodeKind, nsIno uint64) *diagSock {
	const sizeofInetDiagMsg = 72
	if len(msg) < sizeofInetDiagMsg {
		return nil
	}
	ne := binary.NativeEndian
	ino := uint64(ne.Uint32(msg[68:]))
	if !want[ino] {
		return nil
	}
	fam := msg[0]
	sport, dport := binary.BigEndian.Uint16(msg[4:]), binary.BigEndian.Uint16(msg[6:])
	alen := 4
	family := "inet"
	if fam == unix.AF_INET6 {
		alen, family = 16, "inet6"
	}
	src := net.IP(append([]byte(nil), msg[8:8+alen]...))
	dst := net.IP(append([]byte(nil), msg[24:24+alen]...))
	d := &diagSock{kind: kind, info: SocketInfo{
		Inode: ino, Family: family, State: stateName(kind, msg[1]),
		Local: hostPort(src, sport), RecvQueue: ne.Uint32(msg[56:]), SendQueue: ne.Uint32(msg[60:]),
		NetNS: nsIno, Diag: true,
	}}
	if kind == KindTCP {
		d.info.Type, d.info.Protocol = "stream", "tcp"
	} else {
		d.info.Type, d.info.Protocol = "dgram", "udp"
	}
	if dport != 0 || !dst.IsUnspecified() {
		d.info.Remote = hostPort(dst, dport)
	}
	return d
}

// unix_diag constants (linux/unix_diag.h).
const (
	udiagShowName    = 0x01
	udiagShowPeer    = 0x04
	udiagShowRqlen   = 0x10
	unixDiagName     = 0
	unixDiagPeer     = 2
	unixDiagRqlen    = 4
	sizeofUnixDiagRq = 24
	sizeofUnixDiagMs = 16
)

// unixDiagReq is struct unix_diag_req asking for every UNIX socket.
type unixDiagReq struct{}

func (unixDiagReq) Len() int { return sizeofUnixDiagRq }

func (unixDiagReq) Serialize() []byte {
	b := make([]byte, sizeofUnixDiagRq)
	b[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(b[4:], ^uint32(0)) // all states
	binary.NativeEndian.PutUint32(b[12:], udiagShowName|udiagShowPeer|udiagShowRqlen)
	return b
}

// parseUnixDiagMsg decodes one struct unix_diag_msg and its attributes.
func parseUnixDiagMsg(msg []byte, nsIno uint64) *diagSock {
	if len(msg) < sizeofUnixDiagMs || msg[0] != unix.AF_UNIX {
		return nil
	}
	ne := binary.NativeEndian
	d := &diagSock{kind: KindUnix, info: SocketInfo{
		Inode: uint64(ne.Uint32(msg[4:])), Family: "unix", Type: sockTypeName(msg[1]),
		State: stateName(KindUnix, msg[2]), NetNS: nsIno, Diag: true,
	}}
	forEachAttr(msg[sizeofUnixDiagMs:], func(typ uint16, val []byte) {
		switch typ {
		case unixDiagName:
			d.info.Local = unixName(string(val))
		case unixDiagPeer:
			if len(val) >= 4 {
				d.info.PeerInode = uint64(ne.Uint32(val))
			}
		case unixDiagRqlen:
			if len(val) >= 8 {
				d.info.RecvQueue, d.info.SendQueue = ne.Uint32(val), ne.Uint32(val[4:])
			}
		}
	})
	return d
}

// forEachAttr walks netlink attributes (struct rtattr) in place.
func forEachAttr(b []byte, fn func(typ uint16, val []byte)) {
	ne := binary.NativeEndian
	for len(b) >= 4 {
		l := int(ne.Uint16(b[0:]))
		if l < 4 || l > len(b) {
			return
		}
		fn(ne.Uint16(b[2:]), b[4:l])
		b = b[nlmsgAlign(l):]
		if len(b) == 0 {
			return
		}
	}
}

// sockProtoName asks the kernel for the protocol name of the socket behind
// /proc/PID/fd/FD (the "system.sockprotoname" xattr: TCP, UDPv6, NETLINK,
// PACKET, ...).
func sockProtoName(fdDir string, fd int) string {
	var buf [32]byte
	n, err := unix.Getxattr(fdDir+"/"+strconv.Itoa(fd), "system.sockprotoname", buf[:])
	if err != nil || n <= 0 {
		return ""
	}
	return strings.TrimRight(string(buf[:n]), "\x00")
}

// kindOfProtoName maps a sockprotoname to a node kind and family.
func kindOfProtoName(p string) (NodeKind, string) {
	switch p {
	case "TCP":
		return KindTCP, "inet"
	case "TCPv6":
		return KindTCP, "inet6"
	case "UDP", "UDPLITE":
		return KindUDP, "inet"
	case "UDPv6", "UDPLITEv6":
		return KindUDP, "inet6"
	case "RAW", "PING":
		return KindRawSocket, "inet"
	case "RAWv6", "PINGv6":
		return KindRawSocket, "inet6"
	case "UNIX", "UNIX-STREAM", "UNIX-DGRAM":
		return KindUnix, "unix"
	case "NETLINK":
		return KindNetlink, "netlink"
	case "PACKET":
		return KindPacket, "packet"
	case "":
		return KindSocket, "unknown"
	}
	return KindSocket, strings.ToLower(p)
}
