// Command appsim is the application the introspect tests inspect. It is
// built by the tests; each role is selected by the first argument:
//
//	appsim app EXT_ADDR DIR UNIXNAME  a tree with every resource kind the graph knows
//	appsim blockers                   a tree holding resources CRIU cannot dump
//	appsim farm N DIR                 N processes with 50 descriptors each (benchmark)
//
// A role prints one JSON line starting with "ready " on stdout when its
// tree is complete, then reads commands from stdin (app: "fork MS" starts a
// child that lives MS milliseconds and prints "forked NSPID"; "open NAME"
// and "close NAME" open and close a file in DIR; "thread-open NAME" opens
// one in a thread with a descriptor table of its own). It exits when stdin
// closes.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: appsim ROLE ..."))
	}
	var err error
	switch os.Args[1] {
	case "app":
		err = app(os.Args[2], os.Args[3], os.Args[4])
	case "writer":
		err = writer(os.Args[2])
	case "reader":
		err = reader(os.Args[2], os.Args[3])
	case "sleeper":
		ms, _ := strconv.Atoi(os.Args[2])
		time.Sleep(time.Duration(ms) * time.Millisecond)
	case "blockers":
		err = blockers()
	case "farm":
		n, _ := strconv.Atoi(os.Args[2])
		err = farm(n, os.Args[3])
	case "farm-child":
		err = farmChild(os.Args[2], os.Args[3])
	case "hold":
		select {} // keeps the descriptors it inherited
	default:
		err = fmt.Errorf("unknown role %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "appsim:", err)
	os.Exit(1)
}

func ready(v any) {
	b, _ := json.Marshal(v)
	fmt.Printf("ready %s\n", b)
}

func self() string {
	exe, err := os.Executable()
	if err != nil {
		fail(err)
	}
	return exe
}

// waitStdin runs command handlers until stdin closes.
func waitStdin(handle func(cmd []string)) {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && handle != nil {
			handle(f)
		}
	}
}

// AppInfo is what the app role reports when ready.
type AppInfo struct {
	TCPPort    int    `json:"tcp_port"`
	UDPPort    int    `json:"udp_port"`
	UnixName   string `json:"unix_name"`
	ShmID      int    `json:"shm_id"`
	MemfdInode uint64 `json:"memfd_inode"`
	PipeInode  uint64 `json:"pipe_inode"`
	DataFile   string `json:"data_file"`
	Scratch    string `json:"scratch_file"`
	ExtLocal   string `json:"ext_local"`
}

func app(extAddr, dir, unixName string) error {
	var info AppInfo
	// A pipe from the writer child to the reader child.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(pr.Fd()), &st); err != nil {
		return err
	}
	info.PipeInode = st.Ino
	// A socketpair between this process and the writer.
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	spMine, spChild := os.NewFile(uintptr(sp[0]), "sp0"), os.NewFile(uintptr(sp[1]), "sp1")
	// A memfd mapped here and in the writer.
	mfd, err := unix.MemfdCreate("doppel-appsim", unix.MFD_CLOEXEC)
	if err != nil {
		return err
	}
	if err := unix.Ftruncate(mfd, 64<<10); err != nil {
		return err
	}
	mem, err := unix.Mmap(mfd, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	copy(mem, "memfd data")
	if err := unix.Fstat(mfd, &st); err != nil {
		return err
	}
	info.MemfdInode = st.Ino
	memf := os.NewFile(uintptr(mfd), "memfd")
	// A SysV segment attached here and in the reader.
	shmid, err := unix.SysvShmGet(unix.IPC_PRIVATE, 1<<20, unix.IPC_CREAT|0o600)
	if err != nil {
		return err
	}
	shm, err := unix.SysvShmAttach(shmid, 0, 0)
	if err != nil {
		return err
	}
	copy(shm, "sysv data")
	info.ShmID = shmid
	// Files opened for writing: one in the data path, one outside.
	info.DataFile = filepath.Join(dir, "data", "out.log")
	info.Scratch = filepath.Join(dir, "scratch.log")
	if err := os.MkdirAll(filepath.Dir(info.DataFile), 0o755); err != nil {
		return err
	}
	df, err := os.OpenFile(info.DataFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer df.Close()
	fmt.Fprintln(df, "data")
	sf, err := os.OpenFile(info.Scratch, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer sf.Close()
	fmt.Fprintln(sf, "scratch")
	// A TCP service, and a UNIX service in the abstract namespace.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	info.TCPPort = tl.Addr().(*net.TCPAddr).Port
	info.UnixName = unixName
	ul, err := net.Listen("unix", "@"+unixName)
	if err != nil {
		return err
	}
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer udp.Close()
	info.UDPPort = udp.LocalAddr().(*net.UDPAddr).Port
	// An external dependency: a TCP connection to a peer outside the tree.
	ext, err := net.Dial("tcp", extAddr)
	if err != nil {
		return err
	}
	defer ext.Close()
	info.ExtLocal = ext.LocalAddr().String()
	// Descriptors of the other kinds the graph classifies.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(efd)
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	var mask unix.Sigset_t
	mask.Val[0] = 1 << (uint(unix.SIGUSR2) - 1)
	sfd, err := unix.Signalfd(-1, &mask, unix.SFD_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(sfd)
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ifd)
	if _, err := unix.InotifyAddWatch(ifd, dir, unix.IN_CREATE); err != nil {
		return err
	}

	w := exec.Command(self(), "writer", tl.Addr().String())
	w.ExtraFiles = []*os.File{pw, spChild, memf} // fds 3, 4, 5
	w.Stderr = os.Stderr
	if err := w.Start(); err != nil {
		return err
	}
	r := exec.Command(self(), "reader", strconv.Itoa(shmid), unixName)
	r.ExtraFiles = []*os.File{pr} // fd 3
	r.Stderr = os.Stderr
	if err := r.Start(); err != nil {
		return err
	}
	pr.Close()
	pw.Close()
	spChild.Close()
	// Accept both connections before reporting ready.
	tc, err := tl.Accept()
	if err != nil {
		return err
	}
	defer tc.Close()
	uc, err := ul.Accept()
	if err != nil {
		return err
	}
	defer uc.Close()
	// The reader attached the segment once it connected; mark it for
	// removal so it disappears with the processes.
	if _, err := unix.SysvShmCtl(shmid, unix.IPC_RMID, nil); err != nil {
		return err
	}
	ready(info)
	var children []*exec.Cmd
	opened := map[string]*os.File{}
	waitStdin(func(cmd []string) {
		switch {
		case cmd[0] == "open" && len(cmd) == 2:
			f, err := os.Create(filepath.Join(dir, cmd[1]))
			if err != nil {
				fmt.Fprintln(os.Stderr, "appsim: open:", err)
				return
			}
			opened[cmd[1]] = f
			fmt.Printf("opened %s\n", f.Name())
		case cmd[0] == "thread-open" && len(cmd) == 2:
			// A thread with a descriptor table of its own, which
			// /proc/PID/fd (the leader's table) does not show.
			done := make(chan string)
			var open func()
			open = func() {
				runtime.LockOSThread() // never unlocked: the thread keeps its table
				if unix.Gettid() == os.Getpid() {
					// Keep the main thread, the leader, and try
					// again on another.
					go open()
					select {}
				}
				if err := unix.Unshare(unix.CLONE_FILES); err != nil {
					done <- err.Error()
					return
				}
				f, err := os.Create(filepath.Join(dir, cmd[1]))
				if err != nil {
					done <- err.Error()
					return
				}
				done <- ""
				runtime.KeepAlive(f)
				select {}
			}
			go open()
			if msg := <-done; msg != "" {
				fmt.Fprintln(os.Stderr, "appsim: thread-open:", msg)
				return
			}
			fmt.Printf("thread-opened %s\n", cmd[1])
		case cmd[0] == "close" && len(cmd) == 2:
			if f := opened[cmd[1]]; f != nil {
				f.Close()
				delete(opened, cmd[1])
			}
			fmt.Printf("closed %s\n", cmd[1])
		case cmd[0] == "fork" && len(cmd) == 2:
			c := exec.Command(self(), "sleeper", cmd[1])
			if err := c.Start(); err != nil {
				fmt.Fprintln(os.Stderr, "appsim: fork:", err)
				return
			}
			fmt.Printf("forked %d\n", c.Process.Pid)
			children = append(children, c)
			go c.Wait()
		}
	})
	for _, c := range []*exec.Cmd{w, r} {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	runtime.KeepAlive(spMine)
	runtime.KeepAlive(memf)
	runtime.KeepAlive(mem)
	runtime.KeepAlive(shm)
	_ = children
	return nil
}

func writer(tcpAddr string) error {
	pw := os.NewFile(3, "pipe-w")
	sp := os.NewFile(4, "sp")
	mem, err := unix.Mmap(5, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("writer mmap: %w", err)
	}
	unix.Close(5)
	c, err := net.Dial("tcp", tcpAddr)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintln(pw, "hello")
	runtime.KeepAlive(sp)
	runtime.KeepAlive(mem)
	select {}
}

func reader(shmid, unixName string) error {
	pr := os.NewFile(3, "pipe-r")
	id, _ := strconv.Atoi(shmid)
	shm, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		return fmt.Errorf("reader shmat: %w", err)
	}
	c, err := net.Dial("unix", "@"+unixName)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := pr.Read(buf); err != nil {
				return
			}
		}
	}()
	runtime.KeepAlive(shm)
	select {}
}

// BlockersInfo is what the blockers role reports when ready.
type BlockersInfo struct {
	IOUring   bool `json:"io_uring"`
	TracedPID int  `json:"traced_pid"`
}

func blockers() error {
	var info BlockersInfo
	// io_uring instance.
	var params [120]byte
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(&params[0])), 0)
	if errno == 0 {
		info.IOUring = true
		defer unix.Close(int(fd))
	} else {
		fmt.Fprintln(os.Stderr, "appsim: io_uring_setup:", errno)
	}
	// A device CRIU cannot dump.
	dev, err := os.OpenFile("/dev/loop-control", os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer dev.Close()
	// A traced child: started under ptrace by this process.
	runtime.LockOSThread()
	c := exec.Command(self(), "hold")
	c.SysProcAttr = &unix.SysProcAttr{Ptrace: true}
	if err := c.Start(); err != nil {
		return err
	}
	info.TracedPID = c.Process.Pid
	ready(info)
	waitStdin(nil)
	_ = c.Process.Kill()
	_ = c.Wait()
	return nil
}

// farm starts n-1 children; each process holds about 50 descriptors.
func farm(n int, dir string) error {
	rp, wp, err := os.Pipe()
	if err != nil {
		return err
	}
	var kids []*exec.Cmd
	for i := 1; i < n; i++ {
		c := exec.Command(self(), "farm-child", dir, strconv.Itoa(i))
		c.ExtraFiles = []*os.File{wp}
		c.Env = append(os.Environ(), "GOMAXPROCS=1")
		if err := c.Start(); err != nil {
			return err
		}
		kids = append(kids, c)
	}
	wp.Close()
	keep, err := openFarmFDs(dir, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, 1)
	for i := 1; i < n; i++ {
		if _, err := rp.Read(buf); err != nil {
			return fmt.Errorf("waiting for farm children: %w", err)
		}
	}
	rp.Close()
	ready(map[string]int{"processes": n})
	waitStdin(nil)
	for _, c := range kids {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	runtime.KeepAlive(keep)
	return nil
}

func farmChild(dir, idx string) error {
	i, _ := strconv.Atoi(idx)
	keep, err := openFarmFDs(dir, i)
	if err != nil {
		return err
	}
	w := os.NewFile(3, "ready")
	w.Write([]byte{1})
	w.Close()
	runtime.KeepAlive(keep)
	select {}
}

// openFarmFDs opens 43 descriptors: 15 files, 5 pipes, 5 socketpairs,
// 3 /dev/null, 3 eventfds and 2 TCP listeners. With stdio and the
// runtime's own descriptors a process holds about 50.
func openFarmFDs(dir string, idx int) ([]any, error) {
	var keep []any
	for j := 0; j < 15; j++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("p%d-%d", idx, j)), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		keep = append(keep, f)
	}
	for j := 0; j < 5; j++ {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		keep = append(keep, r, w)
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		keep = append(keep, sp)
	}
	for j := 0; j < 3; j++ {
		f, err := os.Open("/dev/null")
		if err != nil {
			return nil, err
		}
		keep = append(keep, f)
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			return nil, err
		}
		keep = append(keep, fd)
	}
	for j := 0; j < 2; j++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		keep = append(keep, l)
	}
	return keep, nil
}
