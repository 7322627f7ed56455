package criu

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"doppel/replicate/shim"
)

// The test binary plays every part of the CRIU tests: the PID-namespace
// init (as the doppel binary does with its hidden subcommand), the
// applications that get dumped and restored (selected by roleEnv), and the
// tests.
const roleEnv = "DOPPEL_CRIU_TEST_ROLE"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == shim.Subcommand {
		os.Exit(shim.Main(os.Args[2:]))
	}
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	os.Exit(m.Run())
}

func runRole(role string) int {
	var err error
	switch role {
	case "tree-parent":
		err = treeParent()
	case "tree-child":
		err = treeChild()
	case "ticker":
		err = ticker(false)
	case "listener":
		err = ticker(true)
	case "mem":
		err = memHog()
	case "subreaper":
		before, err1 := IsChildSubreaper()
		err2 := SetChildSubreaper()
		after, err3 := IsChildSubreaper()
		if err = errors.Join(err1, err2, err3); err == nil {
			fmt.Printf("before=%v after=%v\n", before, after)
			return 0
		}
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
	return 1
}

// withRole returns the environment with the test role replaced and extra
// variables added.
func withRole(role string, extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, roleEnv+"=")
	})
	return append(append(env, roleEnv+"="+role), extra...)
}

// treeParent is the root application of the test tree. It keeps a counter
// running, listens on 127.0.0.1, has a child connected to it by two pipes
// and by an established loopback TCP connection (both ends in the tree),
// and answers line requests from clients:
//
//	count        -> count <nonce> <counter>
//	pipe <x>     -> pipe <child's answer over the pipes>
//	inner <x>    -> inner <child's answer over the inner TCP connection>
//	pids         -> pids <own pid> <child pid>   (PID-namespace PIDs)
//
// The nonce is drawn at start: the same nonce after a restore proves the
// memory came back rather than a fresh start.
func treeParent() error {
	nonce := rand.Uint64()
	var counter atomic.Int64
	go func() {
		t := time.NewTicker(time.Millisecond)
		for range t.C {
			counter.Add(1)
		}
	}()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port

	toChildR, toChildW, err := os.Pipe()
	if err != nil {
		return err
	}
	fromChildR, fromChildW, err := os.Pipe()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// ForkExec, not os/exec: no pidfd in the tree.
	child, err := syscall.ForkExec(self, []string{self}, &syscall.ProcAttr{
		Env:   withRole("tree-child", "PARENT_PORT="+strconv.Itoa(port)),
		Files: []uintptr{toChildR.Fd(), fromChildW.Fd(), 2},
	})
	if err != nil {
		return err
	}
	toChildR.Close()
	fromChildW.Close()
	fromChild := bufio.NewReader(fromChildR)

	innerConn, err := ln.Accept()
	if err != nil {
		return err
	}
	inner := bufio.NewReader(innerConn)
	if hello, err := inner.ReadString('\n'); err != nil || hello != "child-hello\n" {
		return fmt.Errorf("child hello %q: %v", hello, err)
	}
	fmt.Printf("ready %d\n", port)

	var mu sync.Mutex // one request at a time to the child
	ask := func(w interface{ Write([]byte) (int, error) }, r *bufio.Reader, req string) string {
		mu.Lock()
		defer mu.Unlock()
		if _, err := w.Write([]byte(req + "\n")); err != nil {
			return "error " + err.Error()
		}
		l, err := r.ReadString('\n')
		if err != nil {
			return "error " + err.Error()
		}
		return strings.TrimSpace(l)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				req := strings.TrimSpace(l)
				fmt.Printf("request %q\n", req) // the log grows after every dump
				var reply string
				switch verb, arg, _ := strings.Cut(req, " "); verb {
				case "count":
					reply = fmt.Sprintf("count %d %d", nonce, counter.Load())
				case "pipe":
					reply = "pipe " + ask(toChildW, fromChild, "ping "+arg)
				case "inner":
					reply = "inner " + ask(innerConn, inner, "echo "+arg)
				case "pids":
					reply = fmt.Sprintf("pids %d %d", os.Getpid(), child)
				default:
					reply = "unknown " + verb
				}
				if _, err := c.Write([]byte(reply + "\n")); err != nil {
					return
				}
			}
		}()
	}
}

// treeChild answers "ping x" on stdin with "pong x <pid>" on stdout, and
// "echo x" on its TCP connection to the parent with "reply x <pid>".
func treeChild() error {
	port := os.Getenv("PARENT_PORT")
	c, err := net.Dial("tcp4", "127.0.0.1:"+port)
	if err != nil {
		return err
	}
	if _, err := c.Write([]byte("child-hello\n")); err != nil {
		return err
	}
	go func() {
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				os.Exit(3)
			}
			x := strings.TrimPrefix(strings.TrimSpace(l), "echo ")
			fmt.Fprintf(c, "reply %s %d\n", x, os.Getpid())
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		x := strings.TrimPrefix(in.Text(), "ping ")
		fmt.Printf("pong %s %d\n", x, os.Getpid())
	}
	return fmt.Errorf("stdin closed: %v", in.Err())
}

// ticker writes "tick <nonce> <n>" every 20ms. With listen it also holds a
// listening socket (MPTCP unless GODEBUG says otherwise).
func ticker(listen bool) error {
	if listen {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
	}
	nonce := rand.Uint64()
	for n := 1; ; n++ {
		fmt.Printf("tick %d %d\n", nonce, n)
		time.Sleep(20 * time.Millisecond)
	}
}

// memHog holds MEM_MIB MiB of touched, non-zero memory.
func memHog() error {
	mib, err := strconv.Atoi(os.Getenv("MEM_MIB"))
	if err != nil {
		return err
	}
	buf := make([]byte, mib<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	fmt.Println("ready")
	for {
		time.Sleep(time.Hour)
		buf[0]++ // keep buf alive
	}
}
