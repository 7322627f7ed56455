package introspect

import (
	"bytes"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Descriptors are resolved with as few procfs calls as possible, since
// each costs microseconds and a tree may hold thousands: the link text of
// /proc/PID/fd/N alone resolves sockets and anonymous inodes; pipes add an
// lstat of the link for the open mode; paths add a stat of the file
// (shared by all descriptors of the same path) and the open mode, from
// fdinfo (with the offset) when Config.FDInfo is set.

// devName returns devString(dev), cached: a tree's files sit on a few
// devices.
func (sc *Scanner) devName(dev uint64) string {
	if s, ok := sc.devs[dev]; ok {
		return s
	}
	if sc.devs == nil || len(sc.devs) > 1024 {
		sc.devs = make(map[uint64]string, 16)
	}
	s := devString(dev)
	sc.devs[dev] = s
	return s
}

// fdName returns the decimal name of fd, cached for small numbers.
func (sc *Scanner) fdName(fd int) string {
	if fd < 0 || fd >= 1<<16 {
		return strconv.Itoa(fd)
	}
	for len(sc.names) <= fd {
		sc.names = append(sc.names, strconv.Itoa(len(sc.names)))
	}
	return sc.names[fd]
}

// fdCtx is the per-process state of descriptor resolution.
type fdCtx struct {
	s          *scanner
	p          *Process
	dfd        int // /proc/PID
	fdDir      int // /proc/PID/fd
	infoDir    int // /proc/PID/fdinfo, opened on first use
	infoErr    bool
	unreadable func(string, error)
	pidStr     string // decimal pid, made on first use
	// rec is the iterator's record of the descriptor being classified:
	// when set, its stat and open mode are used instead of procfs calls.
	rec *fdRec
}

// fdinfo reads /proc/PID/fdinfo/NAME.
func (c *fdCtx) fdinfo(name string, extra bool) (fdinfo, bool) {
	if c.infoDir == 0 {
		fd, err := c.s.r.openat(c.dfd, "fdinfo", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
		if err != nil {
			c.infoDir = -1
			c.unreadable("fdinfo", err)
			return fdinfo{}, false
		}
		c.infoDir = fd
	}
	if c.infoDir < 0 {
		return fdinfo{}, false
	}
	b, err := c.s.r.readRecordAt(c.infoDir, name)
	if err != nil {
		if !isGone(err) && !c.infoErr {
			c.infoErr = true
			c.unreadable("fdinfo", err)
		}
		return fdinfo{}, false
	}
	return parseFdinfo(b, extra), true
}

// access returns the open mode of descriptor name from its link's
// permission bits.
func (c *fdCtx) access(name string) string {
	if c.rec != nil {
		return c.rec.access()
	}
	var st unix.Stat_t
	if c.s.r.fstatat(c.fdDir, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return ""
	}
	return accessOfLinkMode(st.Mode)
}

// readFDs resolves every descriptor of p to a resource node.
//
// Listing /proc/PID/fd costs the kernel a dentry lookup per descriptor,
// about half the cost of the readlink that follows. So when the process
// holds as many descriptors as the last scan resolved (the kernel reports
// the count as the directory's size), their numbers are read directly:
// all of them still open and the same count means the same set. The count
// is taken again at the end, and the directory is listed after all if a
// number is gone or the count changed, so a descriptor opened during the
// scan is found as before. What this cannot see is a descriptor opened at
// a new number while as many others were closed and reopened around the
// readlinks; a frozen tree has none, a running one shows it in the next
// scan.
func (s *scanner) readFDs(pf *procFiles, p *Process, unreadable func(string, error)) {
	if s.iter != nil && s.iter.covers(p.PID) {
		s.readFDsIter(pf, p, s.iter.recs[p.PID], unreadable)
		return
	}
	s.procfsFDs++
	fdDir, fresh, err := s.sc.openFDDir(pf)
	if err != nil {
		unreadable("fds", err)
		return
	}
	c := &fdCtx{s: s, p: p, dfd: pf.dir, fdDir: fdDir, unreadable: unreadable}
	defer func() {
		if c.infoDir > 0 {
			s.r.close(c.infoDir)
		}
	}()
	linkErr := false
	// resolve reads descriptor fd and reports whether it is still open.
	resolve := func(fd int) bool {
		name := s.sc.fdName(fd)
		link, err := s.r.readlinkBytes(fdDir, name)
		if err != nil {
			if isGone(err) {
				return false // closed meanwhile
			}
			if !linkErr {
				linkErr = true
				unreadable("fd "+name, err)
			}
			return true
		}
		p.FDCount++
		c.classify(fd, name, link)
		return true
	}

	prev := pf.fds
	done := 0 // prev[:done] are resolved
	if !fresh && len(prev) > 0 && s.sc.fdCount(fdDir) == len(prev) {
		for done < len(prev) && resolve(prev[done]) {
			done++
		}
		if done == len(prev) && s.sc.fdCount(fdDir) == len(prev) {
			return
		}
	}

	if !fresh {
		if fdDir, err = s.sc.rewindFDDir(pf); err != nil {
			unreadable("fds", err)
			return
		}
		c.fdDir = fdDir
	}
	fds := s.fdBuf[:0]
	if err := s.r.readDirNames(fdDir, func(name []byte) {
		if n, ok := atoiBytes(name); ok {
			fds = append(fds, n)
		}
	}); err != nil {
		unreadable("fds", err)
	}
	s.fdBuf = fds
	seen := prev[:done]
	open := append(s.openBuf[:0], seen...)
	for _, fd := range fds {
		if _, ok := slices.BinarySearch(seen, fd); ok {
			continue
		}
		if resolve(fd) {
			open = append(open, fd)
		}
	}
	if done > 0 {
		slices.Sort(open)
	}
	s.openBuf = open
	pf.fds = append(pf.fds[:0], open...)
}

// readFDsIter is readFDs from the iterator's records of p. A link too
// long for a record is read from procfs.
func (s *scanner) readFDsIter(pf *procFiles, p *Process, recs []fdRec, unreadable func(string, error)) {
	c := &fdCtx{s: s, p: p, dfd: pf.dir, fdDir: -1, unreadable: unreadable}
	defer func() {
		if c.infoDir > 0 {
			s.r.close(c.infoDir)
		}
	}()
	fds := pf.fds[:0]
	linkErr := false
	for i := range recs {
		r := &recs[i]
		if r.threadOnly {
			continue
		}
		name := s.sc.fdName(r.fd)
		link := r.link
		if link == nil {
			var err error
			if c.fdDir < 0 {
				c.fdDir, _, err = s.sc.openFDDir(pf)
			}
			if err == nil {
				link, err = s.r.readlinkBytes(c.fdDir, name)
			}
			if err != nil {
				if !isGone(err) && !linkErr {
					linkErr = true
					unreadable("fd "+name, err)
				}
				continue
			}
		}
		c.rec = r
		p.FDCount++
		c.classify(r.fd, name, link)
		fds = append(fds, r.fd)
	}
	pf.fds = fds
}

var (
	prefixSocket = []byte("socket:[")
	prefixPipe   = []byte("pipe:[")
	prefixAnon   = []byte("anon_inode:")
	prefixPidfd  = []byte("pidfd:")
)

// classify turns one descriptor into a resource node and a holder on it.
// link is only valid during the call.
func (c *fdCtx) classify(fd int, name string, link []byte) {
	s, pid := c.s, c.p.PID
	h := Holder{PID: pid, FD: fd}
	switch {
	case bytes.HasPrefix(link, prefixSocket):
		ino, _ := bracketNum(link)
		u := s.sockets[ino]
		if u == nil {
			u = &sockUse{ino: ino, netns: c.p.Namespaces["net"]}
			s.sockets[ino] = u
		}
		h.Access = "rw"
		u.holders = append(u.holders, h)
	case bytes.HasPrefix(link, prefixPipe):
		ino, _ := bracketNum(link)
		if s.cfg.PipeAccess || c.rec != nil {
			h.Access = c.access(name)
		}
		n := s.pipes[ino]
		if n == nil {
			var buf [32]byte
			n = s.node(string(strconv.AppendUint(append(buf[:0], "pipe:"...), ino, 10)), KindPipe, string(link))
			s.pipes[ino] = n
		}
		n.Holders = append(n.Holders, h)
	case bytes.HasPrefix(link, prefixAnon):
		what := s.sc.intern(bytes.Trim(link[len(prefixAnon):], "[]"))
		c.anon(h, name, anonKind(what), what)
	case bytes.HasPrefix(link, prefixPidfd):
		c.anon(h, name, KindPidfd, "pidfd")
	case len(link) > 0 && link[0] == '/':
		c.path(h, name, link)
	default:
		l := string(link)
		h.Access = c.access(name)
		var n *Node
		if nsLinkType(l) != "" {
			n = s.node("nsfile:"+l, KindNSFile, l)
		} else {
			n = s.node("unknown:"+strconv.Itoa(pid)+":"+name, KindUnknown, l)
		}
		n.Holders = append(n.Holders, h)
	}
}

// pipeEnds reads, when Config.PipeAccess is off, the open mode of the
// holders of the pipes that need it: those held by more than one process
// of the tree (the pipe edges go from writers to readers) or also outside
// it (the verdict compares the ends). It runs after findOutsideHolders.
func (s *scanner) pipeEnds() {
	if s.cfg.PipeAccess {
		return
	}
	root := -1
	var buf []byte
	for _, n := range s.pipes {
		need := len(n.Outside) > 0 || heldByMany(n.Holders)
		for i := range n.Holders {
			h := &n.Holders[i]
			switch {
			case !need:
				// The iterator reads every end's mode; the graph says
				// the same whichever source read the descriptors.
				h.Access = ""
				continue
			case h.Access != "":
				continue // read along with the descriptor
			case root < 0:
				var err error
				if root, err = s.sc.procRootFD(); err != nil {
					return
				}
			}
			buf = strconv.AppendInt(buf[:0], int64(h.PID), 10)
			buf = strconv.AppendInt(append(buf, "/fd/"...), int64(h.FD), 10)
			var st unix.Stat_t
			if s.r.fstatat(root, string(buf), &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
				h.Access = accessOfLinkMode(st.Mode)
			}
		}
	}
}

// heldByMany reports whether hs span more than one process.
func heldByMany(hs []Holder) bool {
	for _, h := range hs[min(1, len(hs)):] {
		if h.PID != hs[0].PID {
			return true
		}
	}
	return false
}

// anon records an anonymous-inode descriptor. Each gets its own node: the
// kernel shares one inode between all of them. Their open mode does not
// matter to a checkpoint, so it is only read along with fdinfo.
func (c *fdCtx) anon(h Holder, name string, kind NodeKind, what string) {
	s := c.s
	var info map[string]string
	if s.cfg.FDInfo && kind != KindIOUring {
		if fi, ok := c.fdinfo(name, true); ok {
			h.Flags, h.Access, info = fi.Flags, accessOf(fi.Flags), fi.Extra
		}
	}
	if c.pidStr == "" {
		c.pidStr = strconv.Itoa(c.p.PID)
	}
	pid := c.pidStr
	n := s.node(string(kind)+":"+pid+":"+name, kind, what+" (fd "+name+" of "+pid+")")
	if kind == KindAnonInode || kind == KindBPF {
		if info == nil {
			info = map[string]string{}
		}
		info["anon_inode"] = what
	}
	n.Info = info
	n.Holders = append(n.Holders, h)
}

// fileStat is what a scan keeps of a stat(2) result.
type fileStat struct {
	mode           uint32
	size           int64
	dev, ino, rdev uint64
}

// statPath stats the file behind descriptor name, reusing the result for
// the same path in the same mount namespace within one scan (a /dev/null
// or a log file open in every process is stat'ed once). path is only read.
//
// When it stores path as a string, it returns "file:"+path in *fileID, the
// ID of the path's node, which the table key shares.
func (c *fdCtx) statPath(name string, path []byte, deleted bool, fileID *string) (fileStat, error) {
	if c.rec != nil {
		return c.rec.st, nil
	}
	mntns := c.p.Namespaces["mnt"]
	byPath := c.s.stats[mntns]
	if !deleted && byPath != nil {
		if st, ok := byPath[string(path)]; ok {
			return st, nil
		}
	}
	var st unix.Stat_t
	if err := c.s.r.fstatat(c.fdDir, name, &st, 0); err != nil {
		return fileStat{}, err
	}
	fs := fileStat{mode: st.Mode, size: st.Size, dev: st.Dev, ino: st.Ino, rdev: st.Rdev}
	if !deleted {
		if byPath == nil {
			byPath = make(map[string]fileStat, c.s.sc.last.statPaths+64)
			c.s.stats[mntns] = byPath
		}
		*fileID = fileIDPrefix + string(path)
		byPath[(*fileID)[len(fileIDPrefix):]] = fs
	}
	return fs, nil
}

// fileIDPrefix starts the ID of a node named by its path.
const fileIDPrefix = "file:"

var deletedSuffixBytes = []byte(deletedSuffix)

// path records a descriptor whose link is a path. link is only valid
// during the call; strings are made of it only for new nodes.
func (c *fdCtx) path(h Holder, name string, link []byte) {
	s := c.s
	path := bytes.TrimSuffix(link, deletedSuffixBytes)
	deleted := len(path) != len(link)
	typ := "unknown"
	var fileID string
	st, err := c.statPath(name, path, deleted, &fileID)
	if err != nil {
		if isGone(err) {
			return // closed meanwhile
		}
		c.unreadable("fd "+name, err)
	} else {
		typ = fileTypeOf(st.mode)
	}
	mntID := 0
	switch {
	case typ == "regular" && s.cfg.FDInfo:
		if fi, ok := c.fdinfo(name, false); ok {
			h.Flags, h.Access, h.Pos = fi.Flags, accessOf(fi.Flags), fi.Pos
			mntID = fi.MntID
		}
	case typ == "chr" || typ == "blk" || bytes.HasPrefix(path, []byte("/proc/")) || bytes.HasPrefix(path, []byte("/sys/")):
		// The open mode of a device or a kernel file does not change its
		// verdict.
	default:
		h.Access = c.access(name)
	}

	kind, id, label := KindFile, "", ""
	switch typ {
	case "dir":
		kind = KindDir
	case "fifo":
		kind = KindFIFO
	case "chr", "blk":
		kind = KindDevice
		if typ == "chr" && isTTYDev(st.rdev) {
			kind = KindTTY
			if unix.Major(st.rdev) == ttyAuxMajor && unix.Minor(st.rdev) == 2 {
				// Each open of /dev/ptmx is a new pty master, told
				// apart by its index.
				fi, _ := c.fdinfo(name, true)
				idx := fi.Extra["tty-index"]
				id = "ptmx:" + strconv.Itoa(h.PID) + ":" + name
				if idx != "" {
					id = "ptmx:" + idx
				}
				label = "/dev/ptmx (pty " + idx + ")"
			}
		}
	case "regular":
		switch {
		case bytes.HasPrefix(path, []byte("/memfd:")):
			kind, id, label = KindMemfd, "memfd:"+strconv.FormatUint(st.ino, 10), string(path[1:])
		case bytes.HasPrefix(path, []byte("/dev/shm/")):
			kind = KindPosixShm
		}
	}
	var n *Node
	if id == "" {
		// Most paths: look the node up without building strings.
		n = s.files[string(path)]
		if n == nil {
			if fileID == "" {
				fileID = fileIDPrefix + string(path)
			}
			pathStr := fileID[len(fileIDPrefix):]
			n = s.node(fileID, kind, pathStr)
			s.files[pathStr] = n
		}
	} else {
		n = s.node(id, kind, label)
	}
	if n.File == nil || n.File.Type == "unknown" || n.File.Type == "" {
		written := n.File != nil && n.File.Written
		fi := &FileInfo{Path: strings.TrimPrefix(n.ID, "file:"), Deleted: deleted, Type: typ, MntID: mntID, Written: written}
		if kind == KindMemfd || kind == KindTTY && id != "" {
			fi.Path = string(path)
		}
		if err == nil {
			fi.Mode = st.mode & 07777
			fi.Size = st.size
			fi.Dev = s.sc.devName(st.dev)
			fi.Inode = st.ino
			if typ == "chr" || typ == "blk" {
				fi.Rdev = s.sc.devName(st.rdev)
			}
		}
		n.File = fi
	} else if n.File.MntID == 0 {
		n.File.MntID = mntID
	}
	if n.Kind != kind && (n.Kind == KindFile || n.Kind == KindUnknown) {
		n.Kind = kind // first seen through a mapping
	}
	if typ == "regular" && strings.Contains(h.Access, "w") {
		n.File.Written = true
	}
	n.Holders = append(n.Holders, h)
}
