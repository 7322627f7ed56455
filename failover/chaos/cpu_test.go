package chaos

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// socketsOf lists the socket inodes a process holds open.
func socketsOf(pid int) []string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var out []string
	for _, e := range ents {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err == nil && strings.HasPrefix(l, "socket:") {
			out = append(out, l)
		}
	}
	return out
}

// clockTick is the unit of /proc/PID/stat CPU times (USER_HZ, 100 on
// Linux).
const clockTick = 10 * time.Millisecond

// cpuTime is the user+system CPU time of a live process so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	// After "(comm)": state(0) ppid(1) ... utime(11) stime(12).
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * clockTick
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hostCPU returns the busy and total CPU time of the host (all cores).
func hostCPU() (busy, total time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	var sum, idle int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		sum += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return time.Duration(sum-idle) * clockTick, time.Duration(sum) * clockTick
}

// cpuMeter attributes CPU time to named processes over an interval.
type cpuMeter struct {
	pids  map[string]int
	start map[string]time.Duration
	self  time.Duration
	busy  time.Duration
	total time.Duration
}

func startCPU(pids map[string]int) *cpuMeter {
	m := &cpuMeter{pids: pids, start: map[string]time.Duration{}}
	for name, pid := range pids {
		m.start[name] = cpuTime(pid)
	}
	m.self = selfCPU()
	m.busy, m.total = hostCPU()
	return m
}

// report describes the CPU time each process used per request since the
// start, and how busy the host was.
func (m *cpuMeter) report(requests int) string {
	busy, total := hostCPU()
	var names []string
	for name := range m.pids {
		names = append(names, name)
	}
	sort.Strings(names)
	var parts []string
	per := func(d time.Duration) string {
		return fmt.Sprintf("%.0fµs", float64(d.Microseconds())/float64(max(requests, 1)))
	}
	for _, name := range names {
		parts = append(parts, name+" "+per(cpuTime(m.pids[name])-m.start[name]))
	}
	parts = append(parts, "test process (clients) "+per(selfCPU()-m.self))
	util := 0.0
	if total > m.total {
		util = float64(busy-m.busy) / float64(total-m.total)
	}
	return fmt.Sprintf("CPU per request: %s; host busy %.0f%%", strings.Join(parts, ", "), 100*util)
}
