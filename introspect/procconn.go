package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Process connector constants (linux/connector.h, linux/cn_proc.h).
const (
	cnIdxProc         = 1
	cnValProc         = 1
	procCnMcastListen = 1
	procCnMcastIgnore = 2

	procEventFork = 0x00000001
	procEventExec = 0x00000002
	procEventExit = 0x80000000

	cnMsgLen   = 20 // struct cn_msg without data
	procEvHead = 16 // what, cpu, timestamp_ns
)

// procEvent is one fork, exec or exit reported by the process connector.
// For fork, PID/TGID are the child's and PPID/PTGID the parent's.
type procEvent struct {
	What        uint32
	PID, TGID   int
	PPID, PTGID int
}

// procConnector receives process events from the kernel. Read blocks
// until events arrive or Close is called.
type procConnector struct {
	f   *os.File
	buf []byte
}

// openProcConnector subscribes to the kernel's process events. It needs
// CAP_NET_ADMIN in the initial user namespace; the error says why it is
// unavailable otherwise.
func openProcConnector() (*procConnector, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_CONNECTOR)
	if err != nil {
		return nil, fmt.Errorf("process connector socket: %w", err)
	}
	// A large buffer rides out fork storms; overflow is reported as
	// ENOBUFS and handled by a full re-scan.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("process connector bind: %w", err)
	}
	if err := sendMcast(fd, procCnMcastListen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("process connector listen: %w", err)
	}
	return &procConnector{f: os.NewFile(uintptr(fd), "proc-connector"), buf: make([]byte, 64<<10)}, nil
}

func sendMcast(fd int, op uint32) error {
	msg := make([]byte, unix.SizeofNlMsghdr+cnMsgLen+4)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.NLMSG_DONE)
	ne.PutUint32(msg[12:], uint32(os.Getpid()))
	c := msg[unix.SizeofNlMsghdr:]
	ne.PutUint32(c[0:], cnIdxProc)
	ne.PutUint32(c[4:], cnValProc)
	ne.PutUint16(c[16:], 4)
	ne.PutUint32(c[cnMsgLen:], op)
	return unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// errEventsLost means the kernel dropped events because the socket's
// buffer was full.
var errEventsLost = errors.New("process connector: events lost")

// Read blocks for the next datagram and returns the events in it. It
// returns errEventsLost after an overflow and os.ErrClosed after Close.
func (pc *procConnector) Read(out []procEvent) ([]procEvent, error) {
	n, err := pc.f.Read(pc.buf)
	if err != nil {
		if errors.Is(err, unix.ENOBUFS) {
			return out, errEventsLost
		}
		return out, err
	}
	return parseProcEvents(pc.buf[:n], out), nil
}

// Close unsubscribes and closes the socket, waking a blocked Read.
func (pc *procConnector) Close() error {
	if sc, err := pc.f.SyscallConn(); err == nil {
		_ = sc.Control(func(fd uintptr) { _ = sendMcast(int(fd), procCnMcastIgnore) })
	}
	return pc.f.Close()
}

// parseProcEvents decodes the netlink messages of one datagram.
func parseProcEvents(b []byte, out []procEvent) []procEvent {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(ne.Uint32(b[0:]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			break
		}
		typ := ne.Uint16(b[4:])
		body := b[unix.SizeofNlMsghdr:l]
		b = b[nlmsgAlign(l):]
		if typ != unix.NLMSG_DONE || len(body) < cnMsgLen+procEvHead {
			continue
		}
		if ne.Uint32(body[0:]) != cnIdxProc || ne.Uint32(body[4:]) != cnValProc {
			continue
		}
		ev := body[cnMsgLen:]
		what := ne.Uint32(ev[0:])
		data := ev[procEvHead:]
		u := func(i int) int { return int(ne.Uint32(data[4*i:])) }
		switch what {
		case procEventFork:
			if len(data) >= 16 {
				out = append(out, procEvent{What: what, PPID: u(0), PTGID: u(1), PID: u(2), TGID: u(3)})
			}
		case procEventExec:
			if len(data) >= 8 {
				out = append(out, procEvent{What: what, PID: u(0), TGID: u(1)})
			}
		case procEventExit:
			if len(data) >= 24 {
				out = append(out, procEvent{What: what, PID: u(0), TGID: u(1), PPID: u(4), PTGID: u(5)})
			}
		}
	}
	return out
}

func nlmsgAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
