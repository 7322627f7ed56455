package introspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is USER_HZ, the unit of the times in /proc/PID/stat. It is 100
// on every Linux architecture Go supports.
const clockTick = 100

// procReader reads procfs files into one reused buffer. Slices it returns
// stay valid until the next read. Not safe for concurrent use.
type procReader struct {
	buf  []byte
	dent []byte
	link []byte
	// calls counts the system calls made through the reader, a
	// load-independent measure of a scan's cost.
	calls int
}

func newProcReader() *procReader {
	return &procReader{
		buf:  make([]byte, 64<<10),
		dent: make([]byte, 32<<10),
		link: make([]byte, unix.PathMax),
	}
}

// readFileAt reads name relative to dirfd (unix.AT_FDCWD for an absolute
// path) whole.
func (r *procReader) readFileAt(dirfd int, name string) ([]byte, error) {
	return r.read(dirfd, name, 0)
}

// readRecordAt reads a procfs file that the kernel prints as one record
// (stat, status, cgroup, fdinfo, cmdline, comm): a read that leaves room
// in the buffer returned all of it, which saves the read call that would
// return 0. Files printed record by record (maps, smaps, sysvipc) come at
// most a page per read and must use readFileAt.
func (r *procReader) readRecordAt(dirfd int, name string) ([]byte, error) {
	return r.read(dirfd, name, -1)
}

// readChildrenAt reads /proc/PID/task/TID/children. Its records are pids
// of at most 8 bytes printed a page at a time, so a read shorter than a
// page by more than a record is the last one.
func (r *procReader) readChildrenAt(dirfd int, name string) ([]byte, error) {
	return r.read(dirfd, name, 4096-16)
}

// read reads a file whole. done < 0 stops after a read that does not fill
// the buffer; done > 0 stops after a read shorter than done bytes; 0
// reads until end of file.
func (r *procReader) read(dirfd int, name string, done int) ([]byte, error) {
	fd, err := r.openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer r.close(fd)
	n := 0
	for {
		if n == len(r.buf) {
			nb := make([]byte, 2*len(r.buf))
			copy(nb, r.buf)
			r.buf = nb
		}
		r.calls++
		m, err := unix.Read(fd, r.buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			return r.buf[:n], nil
		}
		n += m
		if (done < 0 && n < len(r.buf)) || (done > 0 && m < done) {
			return r.buf[:n], nil
		}
	}
}

// preadAll reads an open procfs file whole from offset 0 (procfs prints it
// afresh). record has readRecordAt's meaning.
func (r *procReader) preadAll(fd int, record bool) ([]byte, error) {
	n := 0
	for {
		if n == len(r.buf) {
			nb := make([]byte, 2*len(r.buf))
			copy(nb, r.buf)
			r.buf = nb
		}
		r.calls++
		m, err := unix.Pread(fd, r.buf[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			return r.buf[:n], nil
		}
		n += m
		if record && n < len(r.buf) {
			return r.buf[:n], nil
		}
	}
}

// openat opens name under dirfd, counting the call.
func (r *procReader) openat(dirfd int, name string, flags int) (int, error) {
	r.calls++
	return openat(dirfd, name, flags)
}

// close closes fd, counting the call.
func (r *procReader) close(fd int) {
	r.calls++
	unix.Close(fd)
}

// fstatat is unix.Fstatat, counted.
func (r *procReader) fstatat(dirfd int, name string, st *unix.Stat_t, flags int) error {
	r.calls++
	return unix.Fstatat(dirfd, name, st, flags)
}

func openat(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// readlinkAt returns the target of the symlink name under dirfd as a
// string.
func (r *procReader) readlinkAt(dirfd int, name string) (string, error) {
	b, err := r.readlinkBytes(dirfd, name)
	return string(b), err
}

// readlinkBytes is readlinkAt without the copy: the slice is valid until
// the next readlink.
func (r *procReader) readlinkBytes(dirfd int, name string) ([]byte, error) {
	for {
		r.calls++
		n, err := unix.Readlinkat(dirfd, name, r.link)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		return r.link[:n], nil
	}
}

// bracketNum parses the number in "kind:[123]"; ok is false without one.
func bracketNum(b []byte) (uint64, bool) {
	i := bytes.IndexByte(b, '[')
	if i < 0 || len(b) < i+3 || b[len(b)-1] != ']' {
		return 0, false
	}
	var n uint64
	for _, c := range b[i+1 : len(b)-1] {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// readDirNames calls fn with each entry name of the procfs directory dirfd,
// except "." and "..". The name slice is only valid during the call.
func (r *procReader) readDirNames(dirfd int, fn func(name []byte)) error {
	for {
		r.calls++
		n, err := unix.Getdents(dirfd, r.dent)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		// procfs fills the buffer as far as the directory goes; with room
		// left for any entry, this was the last batch (saves the call that
		// returns 0).
		last := len(r.dent)-n >= 512
		b := r.dent[:n]
		for len(b) > 0 {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			if len(b) < 19 {
				break
			}
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen == 0 || reclen > len(b) {
				break
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if !(len(name) == 1 && name[0] == '.') && !(len(name) == 2 && name[0] == '.' && name[1] == '.') {
				fn(name)
			}
			b = b[reclen:]
		}
		if last {
			return nil
		}
	}
}

// atoiBytes parses a non-negative decimal integer; ok is false for anything
// else.
func atoiBytes(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// isGone reports whether err means the process (or the file) has
// disappeared.
func isGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH)
}

// statInfo is what Scan uses from /proc/PID/stat.
type statInfo struct {
	PID        int
	Comm       string
	State      string
	PPID       int
	PGID       int
	SID        int
	UTime      uint64
	STime      uint64
	NumThreads int
	StartTime  uint64
	RSSPages   uint64
	Flags      uint64 // PF_* flags of the task
}

// pfKthread is PF_KTHREAD: the task is a kernel thread (it has no
// descriptors).
const pfKthread = 0x00200000

// parseStat parses /proc/PID/stat (or /proc/PID/task/TID/stat). The comm
// field may contain spaces and parentheses; it ends at the last ')'.
func parseStat(b []byte) (statInfo, error) {
	var s statInfo
	open := bytes.IndexByte(b, '(')
	closeIdx := bytes.LastIndexByte(b, ')')
	if open < 0 || closeIdx < open {
		return s, fmt.Errorf("stat: malformed: %q", truncate(b, 64))
	}
	pid, ok := atoiBytes(bytes.TrimSpace(b[:open]))
	if !ok {
		return s, fmt.Errorf("stat: bad pid %q", truncate(b, 64))
	}
	s.PID = pid
	s.Comm = string(b[open+1 : closeIdx])
	// Fields after the comm, from field 3 (state) of proc(5) on.
	var fields [22][]byte
	n := 0
	rest := b[closeIdx+1:]
	for n < len(fields) {
		for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\n') {
			rest = rest[1:]
		}
		if len(rest) == 0 {
			break
		}
		j := bytes.IndexAny(rest, " \n")
		if j < 0 {
			j = len(rest)
		}
		fields[n], rest = rest[:j], rest[j:]
		n++
	}
	if n < len(fields) {
		return s, fmt.Errorf("stat: %d fields after comm, want >= 22", n)
	}
	s.State = stateString(fields[0])
	num := func(i int) uint64 {
		v, _ := parseUintBytes(fields[i], 10)
		return v
	}
	inum := func(i int) int {
		f := fields[i]
		neg := len(f) > 0 && f[0] == '-'
		if neg {
			f = f[1:]
		}
		v, _ := parseUintBytes(f, 10)
		if neg {
			return -int(v)
		}
		return int(v)
	}
	s.PPID = inum(1)
	s.PGID = inum(2)
	s.SID = inum(3)
	s.Flags = num(6)
	s.UTime = num(11)
	s.STime = num(12)
	s.NumThreads = inum(17)
	s.StartTime = num(19)
	s.RSSPages = num(21)
	return s, nil
}

// stateString returns the one-letter process state without allocating for
// the common letters.
func stateString(b []byte) string {
	if len(b) == 1 {
		const letters = "RSDZTtXxKWPI"
		if i := bytes.IndexByte([]byte(letters), b[0]); i >= 0 {
			return letters[i : i+1]
		}
	}
	return string(b)
}

func ticksToDuration(t uint64) time.Duration {
	return time.Duration(t) * (time.Second / clockTick)
}

// statusInfo is what Scan uses from /proc/PID/status.
type statusInfo struct {
	UID       int
	TracerPID int
	NSPID     []int
	VmRSS     uint64 // bytes
	HasVmRSS  bool
}

// parseStatus parses /proc/PID/status.
func parseStatus(b []byte) statusInfo {
	var s statusInfo
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		key, val := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch string(key) {
		case "Uid":
			if f := bytes.Fields(val); len(f) > 0 {
				s.UID, _ = strconv.Atoi(string(f[0]))
			}
		case "TracerPid":
			s.TracerPID, _ = strconv.Atoi(string(val))
		case "NSpid":
			for _, f := range bytes.Fields(val) {
				if n, ok := atoiBytes(f); ok {
					s.NSPID = append(s.NSPID, n)
				}
			}
		case "VmRSS":
			s.VmRSS = parseKB(val)
			s.HasVmRSS = true
		}
	}
	return s
}

// parseKB parses "1234 kB" into bytes.
func parseKB(val []byte) uint64 {
	f := bytes.Fields(val)
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(string(f[0]), 10, 64)
	if len(f) > 1 && string(f[1]) == "kB" {
		n *= 1024
	}
	return n
}

// parseCmdline splits the NUL-separated /proc/PID/cmdline.
func parseCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

// parseLines returns the non-empty lines of b.
func parseLines(b []byte) []string {
	var out []string
	for _, l := range bytes.Split(bytes.TrimSpace(b), []byte{'\n'}) {
		if len(l) > 0 {
			out = append(out, string(l))
		}
	}
	return out
}

// parseChildren parses /proc/PID/task/TID/children: space-separated pids.
func parseChildren(b []byte, fn func(pid int)) {
	for _, f := range bytes.Fields(b) {
		if n, ok := atoiBytes(f); ok {
			fn(n)
		}
	}
}

// fdinfo is what Scan uses from /proc/PID/fdinfo/FD.
type fdinfo struct {
	Pos   int64
	Flags uint32
	MntID int
	Ino   uint64
	// Extra holds the lines that describe anonymous inodes, keyed by
	// their name (eventfd-count, tty-index, ...); "tfd" counts epoll
	// targets and "wd" inotify watches.
	Extra map[string]string
}

// parseFdinfo parses /proc/PID/fdinfo/FD. Extra keys are only collected
// when wantExtra is true.
func parseFdinfo(b []byte, wantExtra bool) fdinfo {
	var fi fdinfo
	tfd, wd := 0, 0
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		key, val := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch string(key) {
		case "pos":
			fi.Pos, _ = strconv.ParseInt(string(val), 10, 64)
		case "flags":
			v, _ := strconv.ParseUint(string(val), 8, 32)
			fi.Flags = uint32(v)
		case "mnt_id":
			fi.MntID, _ = strconv.Atoi(string(val))
		case "ino":
			fi.Ino, _ = strconv.ParseUint(string(val), 10, 64)
		case "tfd":
			tfd++
		case "inotify wd":
			wd++
		case "fanotify ino", "fanotify mnt_id":
			wd++
		default:
			if wantExtra && len(key) > 0 && len(val) < 128 {
				if fi.Extra == nil {
					fi.Extra = make(map[string]string, 4)
				}
				fi.Extra[string(key)] = string(val)
			}
		}
	}
	if wantExtra && tfd > 0 {
		if fi.Extra == nil {
			fi.Extra = make(map[string]string, 1)
		}
		fi.Extra["targets"] = strconv.Itoa(tfd)
	}
	if wantExtra && wd > 0 {
		if fi.Extra == nil {
			fi.Extra = make(map[string]string, 1)
		}
		fi.Extra["watches"] = strconv.Itoa(wd)
	}
	return fi
}

// accessOf turns open flags into "r", "w" or "rw".
func accessOf(flags uint32) string {
	if flags&unix.O_PATH != 0 {
		return ""
	}
	switch flags & unix.O_ACCMODE {
	case unix.O_WRONLY:
		return "w"
	case unix.O_RDWR:
		return "rw"
	default:
		return "r"
	}
}

// accessOfLinkMode turns the permission bits of a /proc/PID/fd/N symlink,
// which the kernel sets from the open mode, into "r", "w" or "rw".
func accessOfLinkMode(mode uint32) string {
	r, w := mode&unix.S_IRUSR != 0, mode&unix.S_IWUSR != 0
	switch {
	case r && w:
		return "rw"
	case w:
		return "w"
	case r:
		return "r"
	}
	return ""
}

// parseMaps walks /proc/PID/smaps or /proc/PID/maps and calls fn for each
// mapping. Size lines of smaps fill the sizes; maps leaves them zero.
// intern turns the repeated strings of mapping lines (perms, devices,
// library paths) into strings; nil means plain conversion.
func parseMaps(b []byte, intern func([]byte) string, fn func(m *Mapping)) error {
	if intern == nil {
		intern = func(b []byte) string { return string(b) }
	}
	var cur Mapping
	have := false
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		if len(line) == 0 {
			continue
		}
		c := line[0]
		if (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') {
			if have {
				fn(&cur)
			}
			m, err := parseMapHeader(line, intern)
			if err != nil {
				return err
			}
			cur, have = m, true
			continue
		}
		if !have {
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		switch string(line[:colon]) {
		case "Rss":
			cur.RSS = parseKB(line[colon+1:])
		case "Pss":
			cur.PSS = parseKB(line[colon+1:])
		case "Shared_Dirty", "Private_Dirty":
			cur.Dirty += parseKB(line[colon+1:])
		case "Swap":
			cur.Swap = parseKB(line[colon+1:])
		}
	}
	if have {
		fn(&cur)
	}
	return nil
}

// parseMapHeader parses "start-end perms offset dev inode path".
func parseMapHeader(line []byte, intern func([]byte) string) (Mapping, error) {
	var m Mapping
	rest := line
	var fields [5][]byte
	for i := range fields {
		for len(rest) > 0 && rest[0] == ' ' {
			rest = rest[1:]
		}
		j := bytes.IndexByte(rest, ' ')
		if j < 0 {
			fields[i], rest = rest, nil
		} else {
			fields[i], rest = rest[:j], rest[j+1:]
		}
	}
	addr, perms, off, dev, ino := fields[0], fields[1], fields[2], fields[3], fields[4]
	dash := bytes.IndexByte(addr, '-')
	var ok1, ok2, ok3, ok4 bool
	if dash >= 0 {
		m.Start, ok1 = parseUintBytes(addr[:dash], 16)
		m.End, ok2 = parseUintBytes(addr[dash+1:], 16)
	}
	m.Offset, ok3 = parseUintBytes(off, 16)
	m.Inode, ok4 = parseUintBytes(ino, 10)
	if !(ok1 && ok2 && ok3 && ok4) || len(perms) != 4 || len(dev) == 0 || m.End < m.Start {
		return m, fmt.Errorf("maps: malformed line %q", truncate(line, 96))
	}
	m.Perms = permsString(perms, intern)
	if string(dev) == "00:00" {
		m.Dev = "00:00"
	} else {
		m.Dev = intern(dev)
	}
	if path := bytes.TrimLeft(rest, " "); len(path) > 0 {
		m.Path = intern(path)
	}
	m.Size = m.End - m.Start
	m.Kind = classifyMapping(&m)
	return m, nil
}

// mapPerms are the permission strings of mappings, indexed by their
// r, w, x and s bits.
var mapPerms = func() (t [16]string) {
	for i := range t {
		b := []byte("---p")
		for j, c := range "rwxs" {
			if i&(1<<j) != 0 {
				b[j] = byte(c)
			}
		}
		t[i] = string(b)
	}
	return t
}()

// permsString returns the perms field of a mapping ("r-xp") as a string
// without a table lookup for the usual forms.
func permsString(b []byte, intern func([]byte) string) string {
	i := 0
	for j, c := range []byte("rwxs") {
		switch b[j] {
		case c:
			i |= 1 << j
		case '-':
			if j == 3 {
				return intern(b)
			}
		case 'p':
			if j != 3 {
				return intern(b)
			}
		default:
			return intern(b)
		}
	}
	return mapPerms[i]
}

// parseUintBytes parses an unsigned number in base 10 or 16 without
// allocating.
func parseUintBytes(b []byte, base uint64) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 && base == 16 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case base == 16 && c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case base == 16 && c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		n = n*base + d
	}
	return n, true
}

const deletedSuffix = " (deleted)"

// classifyMapping gives the kind of a mapping from its path and perms.
func classifyMapping(m *Mapping) MapKind {
	shared := len(m.Perms) == 4 && m.Perms[3] == 's'
	p := m.Path
	switch {
	case p == "":
		if shared {
			return MapAnonShared
		}
		return MapAnonPrivate
	case p == "[heap]":
		return MapHeap
	case p == "[stack]" || hasPrefix(p, "[stack:"):
		return MapStack
	case p == "[vdso]":
		return MapVDSO
	case p == "[vvar]" || p == "[vvar_vclock]":
		return MapVVAR
	case p == "[vsyscall]" || p == "[vectors]":
		return MapVsyscall
	case hasPrefix(p, "[anon_shmem:"):
		return MapAnonShared
	case hasPrefix(p, "[anon:"):
		if shared {
			return MapAnonShared
		}
		return MapAnonPrivate
	case p[0] == '[':
		return MapSpecial
	case hasPrefix(p, "/SYSV") && hasSuffix(p, deletedSuffix):
		return MapSysVShm
	case hasPrefix(p, "/memfd:"):
		return MapMemfd
	case p == "/dev/zero"+deletedSuffix && shared:
		return MapAnonShared
	case p == "/[aio]"+deletedSuffix:
		return MapSpecial
	}
	if shared {
		return MapFileShared
	}
	return MapFilePrivate
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
func hasSuffix(s, p string) bool { return len(s) >= len(p) && s[len(s)-len(p):] == p }

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// devString formats a dev_t as "major:minor".
func devString(dev uint64) string {
	return strconv.FormatUint(uint64(unix.Major(dev)), 10) + ":" + strconv.FormatUint(uint64(unix.Minor(dev)), 10)
}

// fileTypeOf names the file type of a stat mode.
func fileTypeOf(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFCHR:
		return "chr"
	case unix.S_IFBLK:
		return "blk"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFLNK:
		return "symlink"
	}
	return "unknown"
}
