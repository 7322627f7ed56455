package introspect

import (
	"bytes"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// shmDestMode is SHM_DEST, the bit of a segment's mode that marks it for
// removal once the last process detaches.
const shmDestMode = 01000

// parseSysV parses one of /proc/sysvipc/{shm,msg,sem}. Columns are found by
// the names of the header line, so added kernel columns do not break it.
func parseSysV(b []byte, typ string, ipcns uint64) ([]IPCInfo, error) {
	lines := bytes.Split(b, []byte{'\n'})
	if len(lines) == 0 {
		return nil, nil
	}
	head := bytes.Fields(lines[0])
	col := make(map[string]int, len(head))
	for i, h := range head {
		col[string(h)] = i
	}
	idName := map[string]string{"shm": "shmid", "msg": "msqid", "sem": "semid"}[typ]
	if _, ok := col["key"]; !ok {
		return nil, fmt.Errorf("sysvipc %s: no key column in header %q", typ, truncate(lines[0], 80))
	}
	if _, ok := col[idName]; !ok {
		return nil, fmt.Errorf("sysvipc %s: no %s column", typ, idName)
	}
	var out []IPCInfo
	for _, l := range lines[1:] {
		f := bytes.Fields(l)
		if len(f) < len(head) {
			continue
		}
		get := func(name string) string {
			if i, ok := col[name]; ok {
				return string(f[i])
			}
			return ""
		}
		num := func(name string) uint64 {
			v, _ := strconv.ParseUint(get(name), 10, 64)
			return v
		}
		inum := func(name string) int {
			v, _ := strconv.Atoi(get(name))
			return v
		}
		key, _ := strconv.ParseInt(get("key"), 10, 64)
		perms, _ := strconv.ParseUint(get("perms"), 8, 32)
		o := IPCInfo{
			Type:  typ,
			Key:   int32(key),
			ID:    inum(idName),
			Perms: uint32(perms),
			UID:   inum("uid"),
			IPCNS: ipcns,
		}
		switch typ {
		case "shm":
			o.Size = num("size")
			o.CPID = inum("cpid")
			o.LPID = inum("lpid")
			o.Attached = inum("nattch")
			o.Removed = o.Perms&shmDestMode != 0
			o.Perms &^= shmDestMode | 02000 // SHM_DEST, SHM_LOCKED are state, not permission
		case "msg":
			o.Bytes = num("cbytes")
			o.Messages = num("qnum")
			o.LPID = inum("lspid")
			o.LRPID = inum("lrpid")
		case "sem":
			o.NSems = inum("nsems")
		}
		out = append(out, o)
	}
	return out, nil
}

// readSysV returns the SysV IPC objects of the IPC namespace that pid
// lives in. When that namespace is not the caller's, the reading OS thread
// joins it for the duration of the read (root is needed).
func (s *scanner) readSysV(pid int, ipcns, selfIPC uint64) ([]IPCInfo, error) {
	read := func() ([]IPCInfo, error) {
		var all []IPCInfo
		for _, typ := range []string{"shm", "msg", "sem"} {
			b, err := s.r.readFileAt(unix.AT_FDCWD, filepath.Join(s.cfg.ProcRoot, "sysvipc", typ))
			if err != nil {
				return all, fmt.Errorf("read sysvipc/%s: %w", typ, err)
			}
			objs, err := parseSysV(b, typ, ipcns)
			if err != nil {
				return all, err
			}
			all = append(all, objs...)
		}
		return all, nil
	}
	if ipcns == selfIPC || ipcns == 0 {
		return read()
	}
	target, err := unix.Open(filepath.Join(s.cfg.ProcRoot, strconv.Itoa(pid), "ns", "ipc"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open ipc namespace of pid %d: %w", pid, err)
	}
	defer unix.Close(target)
	self, err := unix.Open("/proc/thread-self/ns/ipc", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open own ipc namespace: %w", err)
	}
	defer unix.Close(self)

	type result struct {
		objs []IPCInfo
		err  error
	}
	done := make(chan result, 1)
	// A dedicated goroutine owns the thread: if it cannot return to its
	// namespace, it exits locked and the runtime discards the thread.
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(target, unix.CLONE_NEWIPC); err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("join ipc namespace of pid %d: %w", pid, err)}
			return
		}
		objs, rerr := read()
		if err := unix.Setns(self, unix.CLONE_NEWIPC); err != nil {
			done <- result{objs, rerr}
			return // thread stays locked and is thrown away
		}
		runtime.UnlockOSThread()
		done <- result{objs, rerr}
	}()
	res := <-done
	return res.objs, res.err
}
