package chaos

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// sockmapRelay relays in the kernel, for BenchmarkProxyInProcess's floor:
// each client connection and its connection to the target are in a
// sockmap whose sk_skb verdict program sends what one receives out of the
// other (bpf_sk_redirect_map to its egress), so no byte reaches userspace.
// A socket serves only data that arrives after it is in the map: a client
// must wait for waitRelayed before it sends.
type sockmapRelay struct {
	addr  string
	mu    sync.Mutex
	pairs int // connections relayed so far
}

func (r *sockmapRelay) relayed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pairs
}

// waitRelayed waits until n connections in all have been relayed.
func (r *sockmapRelay) waitRelayed(t testing.TB, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d connections in the sockmap", n), func() (bool, string) {
		got := r.relayed()
		return got >= n, fmt.Sprintf("%d", got)
	})
}

func startSockmapRelay(t testing.TB, target string) (*sockmapRelay, error) {
	t.Helper()
	const slots = 1024
	socks, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockMap, KeySize: 4, ValueSize: 4, MaxEntries: slots})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { socks.Close() })
	// peer: socket cookie → the slot of the socket it relays to.
	peer, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: slots})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { peer.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SkSKB,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.FnGetSocketCookie.Call(),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
			asm.LoadMapPtr(asm.R1, peer.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -8),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "drop"),
			asm.LoadMem(asm.R3, asm.R0, 0, asm.Word),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, socks.FD()),
			asm.Mov.Imm(asm.R4, 0), // egress
			asm.FnSkRedirectMap.Call(),
			asm.Return(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("drop"), // SK_DROP
			asm.Return(),
		},
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { prog.Close() })
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: socks.FD(), Program: prog, Attach: ebpf.AttachSkSKBVerdict}); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &sockmapRelay{addr: ln.Addr().String()}
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	add := func(slot uint32, to uint32, c net.Conn) error {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			return err
		}
		var cookie uint64
		var fd int
		if err := rc.Control(func(f uintptr) {
			fd = int(f)
			cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		}); err != nil {
			return err
		}
		if err != nil {
			return err
		}
		if err := peer.Put(cookie, to); err != nil {
			return err
		}
		return socks.Put(slot, uint32(fd))
	}
	go func() {
		for slot := uint32(0); slot+1 < slots; slot += 2 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				t.Errorf("sockmap relay: %v", err)
				return
			}
			r.mu.Lock()
			conns = append(conns, c, u)
			r.mu.Unlock()
			if err := add(slot+1, slot, u); err != nil {
				t.Errorf("sockmap relay: %v", err)
				return
			}
			if err := add(slot, slot+1, c); err != nil {
				t.Errorf("sockmap relay: %v", err)
				return
			}
			r.mu.Lock()
			r.pairs++
			r.mu.Unlock()
		}
	}()
	return r, nil
}
