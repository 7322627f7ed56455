package introspect

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// A Scanner keeps the procfs files of the processes it reads open between
// scans: re-reading an open /proc/PID/stat with pread costs one call where
// opening, reading and closing it costs three. This is safe: an open procfs
// file stays bound to the process it was opened for, so once that process
// is gone (and its pid possibly reused) reads fail with ESRCH or ENOENT, and
// the file is closed and opened afresh by path.

// maxCachedProcs bounds the processes whose files a Scanner keeps open (up
// to five descriptors each; only processes of the tree are kept).
const maxCachedProcs = 1024

// Files kept open per process.
const (
	pfStat = iota
	pfStatus
	pfMaps
	pfSmaps
	pfCount
)

var pfNames = [pfCount]string{"stat", "status", "maps", "smaps"}

// procFiles are the open files of one process.
type procFiles struct {
	dir   int // /proc/PID, O_PATH
	files [pfCount]int
	fdDir int // /proc/PID/fd
	// fds are the descriptors the last scan resolved, in ascending
	// order; readFDs checks them against the kernel's count instead of
	// listing the directory again.
	fds []int
	// fixedNS are the namespaces of fixedNS once read (0: not yet).
	fixedNS [len(nsNames)]uint64
	gen     uint64
	// dead is set when a read found the process gone. Its files stay
	// open until the process is released, so that no descriptor number
	// handed out during its scan is closed (and reused) under the reader.
	dead bool
}

// cachedProc returns the files of pid, kept or new (nothing is opened
// yet). Past maxCachedProcs the entry is not kept; releaseProc closes it.
func (sc *Scanner) cachedProc(pid int) *procFiles {
	if pf := sc.pfs[pid]; pf != nil {
		pf.gen = sc.gen
		return pf
	}
	pf := &procFiles{dir: -1, fdDir: -1, gen: sc.gen}
	for i := range pf.files {
		pf.files[i] = -1
	}
	if sc.pfs == nil {
		sc.pfs = make(map[int]*procFiles)
	}
	if len(sc.pfs) < maxCachedProcs {
		sc.pfs[pid] = pf
	} else {
		pf.gen = 0
	}
	return pf
}

// procRootFD returns ProcRoot open, kept for the Scanner's life.
func (sc *Scanner) procRootFD() (int, error) {
	if sc.procFD > 0 {
		return sc.procFD, nil
	}
	fd, err := sc.r.openat(unix.AT_FDCWD, sc.cfg.ProcRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return -1, err
	}
	sc.procFD = fd
	return fd, nil
}

// procDir returns /proc/PID open (O_PATH).
func (sc *Scanner) procDir(pid int, pf *procFiles) (int, error) {
	if pf.dead {
		return -1, unix.ESRCH
	}
	if pf.dir >= 0 {
		return pf.dir, nil
	}
	root, err := sc.procRootFD()
	if err != nil {
		return -1, err
	}
	fd, err := sc.r.openat(root, strconv.Itoa(pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return -1, err
	}
	pf.dir = fd
	return fd, nil
}

// releaseProc ends the reading of a process: its files are closed if it
// is not kept, or gone.
func (sc *Scanner) releaseProc(pid int, pf *procFiles) {
	if pf.dead {
		if sc.pfs[pid] == pf {
			delete(sc.pfs, pid)
		}
		sc.closeProc(pf)
		return
	}
	if pf.gen == 0 {
		sc.closeProc(pf)
	}
}

func (sc *Scanner) closeProc(pf *procFiles) {
	if pf.dir >= 0 {
		sc.r.close(pf.dir)
		pf.dir = -1
	}
	for i, fd := range pf.files {
		if fd >= 0 {
			sc.r.close(fd)
			pf.files[i] = -1
		}
	}
	if pf.fdDir >= 0 {
		sc.r.close(pf.fdDir)
		pf.fdDir = -1
	}
	pf.fds = pf.fds[:0]
	pf.fixedNS = [len(nsNames)]uint64{}
}

// readProcFile reads one of the kept-open files of pid whole.
//
// The stat is read first for every process, before any of its descriptors
// is used: when a kept stat fails because its process is gone, the pid may
// have been reused, so the files are closed and the read is tried once
// more by path. Any other read that finds the process gone marks it dead.
func (sc *Scanner) readProcFile(pid int, pf *procFiles, which int) ([]byte, error) {
	if pf.dead {
		return nil, unix.ESRCH
	}
	for attempt := 0; ; attempt++ {
		kept := pf.files[which] >= 0
		if !kept {
			var fd int
			var err error
			if pf.dir >= 0 {
				fd, err = sc.r.openat(pf.dir, pfNames[which], unix.O_RDONLY|unix.O_CLOEXEC)
			} else {
				var root int
				if root, err = sc.procRootFD(); err == nil {
					fd, err = sc.r.openat(root, strconv.Itoa(pid)+"/"+pfNames[which], unix.O_RDONLY|unix.O_CLOEXEC)
				}
			}
			if err != nil {
				if isGone(err) {
					pf.dead = true
				}
				return nil, err
			}
			pf.files[which] = fd
		}
		record := which == pfStat || which == pfStatus
		b, err := sc.r.preadAll(pf.files[which], record)
		if err != nil && isGone(err) {
			if kept && attempt == 0 && which == pfStat {
				sc.closeProc(pf)
				continue
			}
			pf.dead = true
		}
		return b, err
	}
}

// openFDDir returns /proc/PID/fd open; fresh reports whether it was just
// opened (a kept one must be rewound before it is listed).
func (sc *Scanner) openFDDir(pf *procFiles) (fd int, fresh bool, err error) {
	if pf.dead || pf.dir < 0 {
		return -1, false, unix.ESRCH // the process went away meanwhile
	}
	if pf.fdDir >= 0 {
		return pf.fdDir, false, nil
	}
	fd, err = sc.r.openat(pf.dir, "fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return -1, false, err
	}
	pf.fdDir = fd
	pf.fds = pf.fds[:0]
	return fd, true, nil
}

// rewindFDDir returns the kept /proc/PID/fd rewound for listing.
func (sc *Scanner) rewindFDDir(pf *procFiles) (int, error) {
	sc.r.calls++
	if _, err := unix.Seek(pf.fdDir, 0, 0); err == nil {
		return pf.fdDir, nil
	}
	sc.r.close(pf.fdDir)
	pf.fdDir = -1
	fd, _, err := sc.openFDDir(pf)
	return fd, err
}

// fdCount returns the number of open descriptors the kernel reports as
// the size of /proc/PID/fd (Linux 6.2 and later), or -1.
func (sc *Scanner) fdCount(fdDir int) int {
	var st unix.Stat_t
	sc.r.calls++
	if unix.Fstat(fdDir, &st) != nil || st.Size <= 0 {
		return -1
	}
	return int(st.Size)
}

// sweep closes the files of the processes the last scan did not read.
func (sc *Scanner) sweep() {
	for pid, pf := range sc.pfs {
		if pf.gen != sc.gen {
			sc.closeProc(pf)
			delete(sc.pfs, pid)
		}
	}
}

// Close releases the procfs files the Scanner keeps open between scans.
// The Scanner stays usable; the next scan opens them again.
func (sc *Scanner) Close() error {
	for pid, pf := range sc.pfs {
		sc.closeProc(pf)
		delete(sc.pfs, pid)
	}
	if sc.procFD > 0 {
		sc.r.close(sc.procFD)
		sc.procFD = 0
	}
	if sc.fileNr > 0 {
		sc.r.close(sc.fileNr)
		sc.fileNr = 0
	}
	sc.recs = nil
	return nil
}

// keeps reports whether fd is one of the procfs files the Scanner keeps
// open.
func (sc *Scanner) keeps(fd int) bool {
	if sc.kept == nil {
		sc.kept = make(map[int]bool, len(sc.pfs)*2)
		if sc.procFD > 0 {
			sc.kept[sc.procFD] = true
		}
		for _, pf := range sc.pfs {
			for _, f := range append(pf.files[:], pf.dir, pf.fdDir) {
				if f >= 0 {
					sc.kept[f] = true
				}
			}
		}
	}
	return sc.kept[fd]
}
