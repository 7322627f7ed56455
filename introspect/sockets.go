package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// diagSock is one socket as sock_diag reported it.
type diagSock struct {
	kind NodeKind
	info SocketInfo
	// localPort is the bound port of an inet socket, used to tell the
	// server side of a connection inside the tree.
	localPort uint16
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
// wanted sockets).
func (s *scanner) collectSockets(pid int, nsIno uint64, selfNet uint64, want map[uint64]bool) (*netnsSockets, error) {
	var h *netlink.Handle
	var err error
	if nsIno == selfNet || nsIno == 0 {
		h, err = netlink.NewHandleAt(netns.None(), unix.NETLINK_INET_DIAG)
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(filepath.Join(s.cfg.ProcRoot, strconv.Itoa(pid), "ns", "net"))
		if err != nil {
			return nil, fmt.Errorf("open network namespace of pid %d: %w", pid, err)
		}
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_INET_DIAG)
		ns.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer h.Close()

	out := &netnsSockets{byInode: make(map[uint64]*diagSock, len(want)), unixPeers: map[uint64]*diagSock{}}
	var errs []error
	retry := func(what string, f func() error) {
		// A dump interrupted by concurrent socket changes is retried once;
		// a second interruption keeps what was read.
		err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			err = f()
		}
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	inet := func(fam uint8, proto string, kind NodeKind) func() error {
		return func() error {
			var socks []*netlink.Socket
			var err error
			if kind == KindTCP {
				socks, err = h.SocketDiagTCP(fam)
			} else {
				socks, err = h.SocketDiagUDP(fam)
			}
			for _, sk := range socks {
				ino := uint64(sk.INode)
				if !want[ino] {
					continue
				}
				family := "inet"
				if fam == unix.AF_INET6 {
					family = "inet6"
				}
				d := &diagSock{kind: kind, localPort: sk.ID.SourcePort, info: SocketInfo{
					Inode: ino, Family: family, Protocol: proto, State: stateName(kind, sk.State),
					Local: hostPort(sk.ID.Source, sk.ID.SourcePort), RecvQueue: sk.RQueue, SendQueue: sk.WQueue,
					NetNS: nsIno, Diag: true,
				}}
				if kind == KindTCP {
					d.info.Type = "stream"
				} else {
					d.info.Type = "dgram"
				}
				if sk.ID.DestinationPort != 0 || !sk.ID.Destination.IsUnspecified() {
					d.info.Remote = hostPort(sk.ID.Destination, sk.ID.DestinationPort)
				}
				out.byInode[ino] = d
			}
			return err
		}
	}
	retry("tcp4", inet(unix.AF_INET, "tcp", KindTCP))
	retry("tcp6", inet(unix.AF_INET6, "tcp", KindTCP))
	retry("udp4", inet(unix.AF_INET, "udp", KindUDP))
	retry("udp6", inet(unix.AF_INET6, "udp", KindUDP))
	retry("unix", func() error {
		all, err := s.unixDiag(pid, nsIno, selfNet)
		for ino, d := range all {
			if !want[ino] {
				continue
			}
			out.byInode[ino] = d
			if p := d.info.PeerInode; p != 0 {
				if pd, ok := all[p]; ok {
					d.info.Remote = pd.info.Local
					if !want[p] {
						out.unixPeers[p] = pd
					}
				}
			}
		}
		return err
	})
	return out, errors.Join(errs...)
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

// unixDiag dumps the UNIX sockets of a network namespace. It parses the
// replies itself: the name attribute needs its exact length, which the
// netlink package's UnixSocketDiagInfo gets wrong (it keeps the 4 bytes
// that follow it).
func (s *scanner) unixDiag(pid int, nsIno, selfNet uint64) (map[uint64]*diagSock, error) {
	ns := netns.None()
	if nsIno != selfNet && nsIno != 0 {
		h, err := netns.GetFromPath(filepath.Join(s.cfg.ProcRoot, strconv.Itoa(pid), "ns", "net"))
		if err != nil {
			return nil, fmt.Errorf("open network namespace of pid %d: %w", pid, err)
		}
		defer h.Close()
		ns = h
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer sock.Close()
	req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_INET_DIAG: {Socket: sock}}
	req.AddData(unixDiagReq{})
	all := map[uint64]*diagSock{}
	err = req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
		if d := parseUnixDiagMsg(msg, nsIno); d != nil {
			all[d.info.Inode] = d
		}
		return true
	})
	return all, err
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
	attrs, err := nl.ParseRouteAttr(msg[sizeofUnixDiagMs:])
	if err != nil {
		return d
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unixDiagName:
			d.info.Local = unixName(string(a.Value))
		case unixDiagPeer:
			if len(a.Value) >= 4 {
				d.info.PeerInode = uint64(ne.Uint32(a.Value))
			}
		case unixDiagRqlen:
			if len(a.Value) >= 8 {
				d.info.RecvQueue, d.info.SendQueue = ne.Uint32(a.Value), ne.Uint32(a.Value[4:])
			}
		}
	}
	return d
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
