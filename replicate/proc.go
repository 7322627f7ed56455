package replicate

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"doppel/replicate/freezer"
)

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	f, ok := procStat(pid)
	return ok && len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// procStart returns the start time of pid (field 22 of /proc/PID/stat, in
// clock ticks since boot), 0 when it cannot be read. With the PID it
// identifies a process: a PID reused by another process has another start
// time.
func procStart(pid int) uint64 {
	f, ok := procStat(pid)
	if !ok || len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// procStat returns the fields of /proc/PID/stat after the command name,
// starting with the state (field 3).
func procStat(pid int) ([]string, bool) {
	if pid <= 0 {
		return nil, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, false
	}
	// The command name is in parentheses and may contain anything.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, false
	}
	return strings.Fields(string(b[i+1:])), true
}

// treePids returns the processes of an app: root, its descendants and the
// members of its cgroup (which may be nil), each once, root first.
func treePids(root int, cg *freezer.Cgroup) []int {
	seen := map[int]bool{root: true}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		for _, c := range children(out[i]) {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	if cg != nil {
		if pids, err := cg.Pids(); err == nil {
			for _, p := range pids {
				if !seen[p] {
					seen[p] = true
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// children lists the child processes of every thread of pid.
func children(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// repairTCP switches every TCP connection held by pids to repair mode
// (TCP_REPAIR), through a duplicate of the descriptor taken with
// pidfd_getfd. A socket in repair mode is closed without a FIN or a reset,
// so when the processes are then killed their peers see nothing, as after
// a machine failure, and a restore from an epoch can resume the
// connections. The processes should be frozen. Listening sockets are left
// alone (closing them sends nothing). It returns how many connections were
// switched and how many could not be, with the first error.
func repairTCP(pids []int) (switched, failed int, firstErr error) {
	seen := map[string]bool{}
	fail := func(err error) {
		failed++
		if firstErr == nil {
			firstErr = err
		}
	}
	for _, pid := range pids {
		dir := "/proc/" + strconv.Itoa(pid) + "/fd"
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue // gone
		}
		pidfd := -1
		for _, ent := range ents {
			link, err := os.Readlink(dir + "/" + ent.Name())
			if err != nil || !strings.HasPrefix(link, "socket:[") || seen[link] {
				continue
			}
			target, err := strconv.Atoi(ent.Name())
			if err != nil {
				continue
			}
			if pidfd < 0 {
				if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
					fail(fmt.Errorf("pidfd_open %d: %w", pid, err))
					break
				}
			}
			fd, err := unix.PidfdGetfd(pidfd, target, 0)
			if err != nil {
				if !errors.Is(err, unix.EBADF) { // closed meanwhile
					fail(fmt.Errorf("pidfd_getfd %d fd %d: %w", pid, target, err))
				}
				continue
			}
			seen[link] = true
			ok, err := repairOne(fd)
			unix.Close(fd)
			switch {
			case err != nil:
				fail(fmt.Errorf("pid %d fd %d %s: %w", pid, target, link, err))
			case ok:
				switched++
			}
		}
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}
	return switched, failed, firstErr
}

// repairOne puts fd in TCP repair mode if it is a TCP socket that is not
// listening; ok reports whether it did.
func repairOne(fd int) (ok bool, err error) {
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || (dom != unix.AF_INET && dom != unix.AF_INET6) {
		return false, nil
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil || proto != unix.IPPROTO_TCP {
		return false, nil
	}
	if l, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && l != 0 {
		return false, nil
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, 1); err != nil {
		return false, fmt.Errorf("TCP_REPAIR: %w", err)
	}
	return true, nil
}

// killedPid returns the first of pids that has a SIGKILL pending (it dies
// as soon as it is thawed), or 0.
func killedPid(pids []int) int {
	const sigkill = uint64(1) << (unix.SIGKILL - 1)
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if !ok || (k != "SigPnd" && k != "ShdPnd") {
				continue
			}
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && m&sigkill != 0 {
				return pid
			}
		}
	}
	return 0
}

// describeTasks says, for an error, in which state each of pids is and
// where in the kernel it waits: "pid 12 (app) D in do_exit, ...".
func describeTasks(pids []int) string {
	var b strings.Builder
	for i, pid := range pids {
		if i > 0 {
			b.WriteString(", ")
		}
		f, ok := procStat(pid)
		if !ok || len(f) == 0 {
			fmt.Fprintf(&b, "pid %d gone", pid)
			continue
		}
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		wchan, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/wchan")
		fmt.Fprintf(&b, "pid %d (%s) %s", pid, strings.TrimSpace(string(comm)), f[0])
		if w := strings.TrimSpace(string(wchan)); w != "" && w != "0" {
			b.WriteString(" in " + w)
		}
	}
	return b.String()
}
