package introspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The descriptors of a tree can be read without a procfs call each: a BPF
// iterator over the kernel's task_file objects (Linux 5.8+, with BTF)
// walks every open file of every task and, for the processes of the tree
// (a hash map of their pids), writes one record with what the procfs path
// needs three calls for: the link text (bpf_d_path, the function readlink
// of /proc/PID/fd/N uses), the open mode and flags, and the
// inode's type, number, size and devices. One read of the iterator then
// gives the descriptors of the whole tree: on a 100-process, 5 000-fd tree
// it replaces about 8 000 procfs calls.
//
// The program is assembled here from the field offsets the kernel's BTF
// gives, so it needs no compiler and no object file, and follows the
// kernel's struct layouts. Loading it needs root (CAP_BPF and
// CAP_PERFMON). Before it is used, it reads a pipe, a regular file and
// /dev/null of this process and compares the records with fstat: a layout
// it got wrong, or a PID namespace that makes its pids differ from the
// procfs ones, turns it off. The Scanner then reads procfs as before.

// fdRecSize is the size of one record: a 64-byte header and the link text.
const (
	fdRecHeader = 64
	fdLinkMax   = 448 // a longer link is read from procfs
	fdRecSize   = fdRecHeader + fdLinkMax
)

// Offsets in a record.
const (
	recTGID    = 0
	recPID     = 4
	recFD      = 8
	recFlags   = 12
	recFMode   = 16
	recIMode   = 20
	recPad     = 24 // unused
	recIno     = 32
	recSize    = 40
	recRdev    = 48
	recDev     = 52
	recLinkLen = 56
)

// Kernel file modes (include/linux/fs.h).
const (
	fmodeRead  = 0x1
	fmodeWrite = 0x2
)

// fdRec is one descriptor as the iterator read it.
type fdRec struct {
	fd         int
	flags      uint32 // f_flags, as fdinfo shows them
	fmode      uint32
	st         fileStat
	link       []byte // nil when the link did not fit; valid until the next read
	threadOnly bool   // a thread's own table, which procfs does not show
}

// access is the open mode as "r", "w" or "rw".
func (r *fdRec) access() string {
	switch r.fmode & (fmodeRead | fmodeWrite) {
	case fmodeRead | fmodeWrite:
		return "rw"
	case fmodeWrite:
		return "w"
	case fmodeRead:
		return "r"
	}
	return ""
}

// kernelLayout are the offsets, in bytes, of the fields the program reads.
type kernelLayout struct {
	taskTGID, taskPID                         int16
	fileFlags, fileMode, fileInode            int16
	filePath                                  int16
	inodeMode, inodeIno, inodeSize, inodeRdev int16
	inodeSB, sbDev                            int16
}

var (
	layoutOnce sync.Once
	layout     kernelLayout
	layoutErr  error
)

// loadLayout reads the offsets from the kernel's BTF, once per process.
func loadLayout() (kernelLayout, error) {
	layoutOnce.Do(func() {
		spec, err := btf.LoadKernelSpec()
		if err != nil {
			layoutErr = err
			return
		}
		off := func(typ, field string) int16 {
			var s *btf.Struct
			err := spec.TypeByName(typ, &s)
			o, ok := uint32(0), false
			if err == nil {
				o, ok = memberOffset(s.Members, field)
			}
			if (!ok || o > 1<<15-8) && layoutErr == nil {
				layoutErr = fmt.Errorf("no field %s.%s in the kernel's BTF (%v)", typ, field, err)
			}
			return int16(o)
		}
		layout = kernelLayout{
			taskTGID: off("task_struct", "tgid"), taskPID: off("task_struct", "pid"),
			fileFlags: off("file", "f_flags"), fileMode: off("file", "f_mode"),
			fileInode: off("file", "f_inode"), filePath: off("file", "f_path"),
			inodeMode: off("inode", "i_mode"), inodeIno: off("inode", "i_ino"),
			inodeSize: off("inode", "i_size"), inodeRdev: off("inode", "i_rdev"),
			inodeSB: off("inode", "i_sb"), sbDev: off("super_block", "s_dev"),
		}
	})
	return layout, layoutErr
}

// memberOffset finds field in ms, looking into anonymous structs and
// unions, and returns its offset in bytes.
func memberOffset(ms []btf.Member, field string) (uint32, bool) {
	for _, m := range ms {
		if m.Name == field {
			return m.Offset.Bytes(), true
		}
		if m.Name != "" {
			continue
		}
		var inner []btf.Member
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			inner = t.Members
		case *btf.Union:
			inner = t.Members
		}
		if o, ok := memberOffset(inner, field); ok {
			return m.Offset.Bytes() + o, true
		}
	}
	return 0, false
}

// fdProgram assembles the iterator program for l, filtering on pids.
//
// Context (struct bpf_iter__task_file): meta at 0, task at 8, fd at 16,
// file at 24. The record is built on the stack at fp-fdRecSize.
func fdProgram(l kernelLayout, pids *ebpf.Map) asm.Instructions {
	const rec = -fdRecSize
	st := func(off int16, src asm.Register, size asm.Size) asm.Instruction {
		return asm.StoreMem(asm.RFP, rec+off, src, size)
	}
	return asm.Instructions{
		asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord),  // meta
		asm.LoadMem(asm.R7, asm.R1, 8, asm.DWord),  // task
		asm.LoadMem(asm.R9, asm.R1, 16, asm.Word),  // fd
		asm.LoadMem(asm.R8, asm.R1, 24, asm.DWord), // file
		asm.JEq.Imm(asm.R7, 0, "out"),
		asm.JEq.Imm(asm.R8, 0, "out"),
		asm.LoadMem(asm.R2, asm.R7, l.taskTGID, asm.Word),
		st(recTGID, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, pids.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, rec+recTGID),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R2, asm.R7, l.taskPID, asm.Word),
		st(recPID, asm.R2, asm.Word),
		st(recFD, asm.R9, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, l.fileFlags, asm.Word),
		st(recFlags, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, l.fileMode, asm.Word),
		st(recFMode, asm.R2, asm.Word),
		asm.StoreImm(asm.RFP, rec+recPad, 0, asm.Word),
		asm.StoreImm(asm.RFP, rec+recPad+4, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R8, l.fileInode, asm.DWord),
		asm.LoadMem(asm.R2, asm.R3, l.inodeMode, asm.Half),
		st(recIMode, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R3, l.inodeIno, asm.DWord),
		st(recIno, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R3, l.inodeSize, asm.DWord),
		st(recSize, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R3, l.inodeRdev, asm.Word),
		st(recRdev, asm.R2, asm.Word),
		asm.LoadMem(asm.R3, asm.R3, l.inodeSB, asm.DWord),
		asm.LoadMem(asm.R2, asm.R3, l.sbDev, asm.Word),
		st(recDev, asm.R2, asm.Word),
		asm.StoreImm(asm.RFP, rec+recLinkLen+4, 0, asm.Word), // padding
		// bpf_d_path(&file->f_path, link, fdLinkMax)
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Add.Imm(asm.R1, int32(l.filePath)),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, rec+fdRecHeader),
		asm.Mov.Imm(asm.R3, fdLinkMax),
		asm.FnDPath.Call(),
		st(recLinkLen, asm.R0, asm.Word),
		// bpf_seq_write(meta->seq, record, fdRecHeader+link length):
		// only the bytes of the link are written.
		asm.Mov.Reg(asm.R3, asm.R0),
		asm.JSGE.Imm(asm.R3, 0, "len-ok"),
		asm.Mov.Imm(asm.R3, 0),
		asm.JLE.Imm(asm.R3, fdLinkMax, "len-set").WithSymbol("len-ok"),
		asm.Mov.Imm(asm.R3, 0),
		asm.Add.Imm(asm.R3, fdRecHeader).WithSymbol("len-set"),
		asm.LoadMem(asm.R1, asm.R6, 0, asm.DWord),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, rec),
		asm.FnSeqWrite.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}

// fdIter is the loaded iterator and its pid filter, one per process
// (loading costs tens of milliseconds, most of it in the kernel's BTF);
// Scanners take turns with it.
type fdIter struct {
	mu    sync.Mutex
	pids  *ebpf.Map
	prog  *ebpf.Program
	link  *link.Iter
	inMap map[uint32]bool // the pids in the map
}

// fdRecs are the records of one read, a Scanner's own.
type fdRecs struct {
	buf     []byte
	recs    map[int][]fdRec // by process
	covered map[int]bool    // the processes read
}

// covers reports whether the read covered pid.
func (r *fdRecs) covers(pid int) bool { return r.covered[pid] }

// maxIterPIDs bounds the processes one read covers; the others are read
// through procfs.
const maxIterPIDs = 1 << 14

var (
	iterOnce     sync.Once
	sharedIter   *fdIter
	iterErr      error
	iterLoaded   atomic.Bool // loadFDIter has returned
	iterStarting atomic.Bool // a load has started
)

// loadFDIter returns the process's iterator, loading it on first use.
func loadFDIter() (*fdIter, error) {
	iterOnce.Do(func() {
		sharedIter, iterErr = newFDIter()
		iterLoaded.Store(true)
	})
	return sharedIter, iterErr
}

// loadedFDIter returns the process's iterator once loaded (done), and
// otherwise starts loading it in the background: a scan, which may run
// in a freeze window, never waits for the load.
func loadedFDIter() (it *fdIter, err error, done bool) {
	if iterLoaded.Load() {
		return sharedIter, iterErr, true
	}
	if iterStarting.CompareAndSwap(false, true) {
		go loadFDIter()
	}
	return nil, nil, false
}

// newFDIter loads the iterator and checks it against fstat of this
// process's own descriptors.
func newFDIter() (*fdIter, error) {
	l, err := loadLayout()
	if err != nil {
		return nil, err
	}
	it := &fdIter{inMap: map[uint32]bool{}}
	it.pids, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 1,
		MaxEntries: maxIterPIDs, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		return nil, fmt.Errorf("pid map: %w", err)
	}
	it.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "doppel_fds", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter,
		AttachTo: "task_file", License: "GPL", Instructions: fdProgram(l, it.pids),
	})
	if err != nil {
		it.close()
		return nil, fmt.Errorf("load program: %w", err)
	}
	it.link, err = link.AttachIter(link.IterOptions{Program: it.prog})
	if err != nil {
		it.close()
		return nil, fmt.Errorf("attach iterator: %w", err)
	}
	if err := it.selfCheck(); err != nil {
		it.close()
		return nil, fmt.Errorf("self-check: %w", err)
	}
	return it, nil
}

func (it *fdIter) close() {
	if it.link != nil {
		it.link.Close()
	}
	if it.prog != nil {
		it.prog.Close()
	}
	if it.pids != nil {
		it.pids.Close()
	}
}

// read reads the descriptors of pids (at most maxIterPIDs of them) into
// out, replacing what it held.
func (it *fdIter) read(pids []int, out *fdRecs) error {
	if out.recs == nil {
		out.recs, out.covered = map[int][]fdRec{}, map[int]bool{}
	}
	clear(out.covered)
	for _, p := range pids {
		if len(out.covered) == maxIterPIDs {
			break
		}
		out.covered[p] = true
	}
	// Keep the record slices of the processes read again.
	for p, rs := range out.recs {
		if out.covered[p] {
			out.recs[p] = rs[:0]
		} else {
			delete(out.recs, p)
		}
	}
	n, err := it.readLocked(out)
	if err != nil {
		clear(out.covered)
		return err
	}
	if err := out.parse(n); err != nil {
		clear(out.covered)
		clear(out.recs)
		return err
	}
	return nil
}

// readLocked sets the pid map to out.covered and reads the iterator into
// out.buf, returning the bytes read.
func (it *fdIter) readLocked(out *fdRecs) (int, error) {
	it.mu.Lock()
	defer it.mu.Unlock()
	for p := range it.inMap {
		if !out.covered[int(p)] {
			if err := it.pids.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return 0, fmt.Errorf("pid map: %w", err)
			}
			delete(it.inMap, p)
		}
	}
	for p := range out.covered {
		if !it.inMap[uint32(p)] {
			if err := it.pids.Put(uint32(p), uint8(1)); err != nil {
				return 0, fmt.Errorf("pid map: %w", err)
			}
			it.inMap[uint32(p)] = true
		}
	}
	r, err := it.link.Open()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	n := 0
	if out.buf == nil {
		out.buf = make([]byte, 64<<10)
	}
	for {
		if len(out.buf)-n < 32<<10 {
			out.buf = append(out.buf, make([]byte, len(out.buf))...)
		}
		m, err := r.Read(out.buf[n:])
		n += m
		if err == io.EOF || (err == nil && m == 0) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// parse splits the first n bytes of r.buf into records.
func (r *fdRecs) parse(n int) error {
	le := binary.LittleEndian
	for b := r.buf[:n]; len(b) > 0; {
		if len(b) < fdRecHeader {
			return fmt.Errorf("iterator returned %d bytes of a record", len(b))
		}
		tgid := int(le.Uint32(b[recTGID:]))
		rec := fdRec{
			fd:    int(le.Uint32(b[recFD:])),
			flags: le.Uint32(b[recFlags:]),
			fmode: le.Uint32(b[recFMode:]),
			st: fileStat{
				mode: le.Uint32(b[recIMode:]),
				ino:  le.Uint64(b[recIno:]),
				size: int64(le.Uint64(b[recSize:])),
				rdev: userDev(le.Uint32(b[recRdev:])),
				dev:  userDev(le.Uint32(b[recDev:])),
			},
			threadOnly: le.Uint32(b[recPID:]) != uint32(tgid),
		}
		// bpf_d_path returns the length with the terminating NUL, or
		// an error; then only the header was written.
		ln := int(int32(le.Uint32(b[recLinkLen:])))
		if ln < 0 || ln > fdLinkMax {
			ln = 0
		}
		if len(b) < fdRecHeader+ln {
			return fmt.Errorf("iterator returned %d bytes of a record", len(b))
		}
		if ln > 0 {
			rec.link = b[fdRecHeader : fdRecHeader+ln-1 : fdRecHeader+ln-1]
		}
		r.recs[tgid] = append(r.recs[tgid], rec)
		b = b[fdRecHeader+ln:]
	}
	return nil
}

// userDev turns a kernel dev_t (major << 20 | minor) into the encoding
// stat(2) returns.
func userDev(d uint32) uint64 {
	return unix.Mkdev(d>>20, d&(1<<20-1))
}

// selfCheck reads this process's descriptors and compares a pipe, a
// regular file and /dev/null with what fstat and fcntl say of them.
func (it *fdIter) selfCheck() error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	exe, err := os.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	defer exe.Close()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	self := os.Getpid()
	var recs fdRecs
	if err := it.read([]int{self}, &recs); err != nil {
		return err
	}
	byFD := map[int]fdRec{}
	for _, r := range recs.recs[self] {
		if !r.threadOnly {
			byFD[r.fd] = r
		}
	}
	for _, c := range []struct {
		fd   int
		link string
	}{{p[1], ""}, {int(exe.Fd()), ""}, {int(null.Fd()), os.DevNull}} {
		var st unix.Stat_t
		if err := unix.Fstat(c.fd, &st); err != nil {
			return err
		}
		fl, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFL, 0)
		if err != nil {
			return err
		}
		want := c.link
		if want == "" && st.Mode&unix.S_IFMT == unix.S_IFIFO {
			want = "pipe:[" + strconv.FormatUint(st.Ino, 10) + "]"
		}
		r, ok := byFD[c.fd]
		switch {
		case !ok:
			return fmt.Errorf("fd %d of pid %d not read (a PID namespace other than procfs's?)", c.fd, self)
		case r.st.mode != st.Mode || r.st.ino != st.Ino || r.st.rdev != st.Rdev:
			return fmt.Errorf("fd %d: mode %o ino %d rdev %#x, fstat says %o %d %#x", c.fd, r.st.mode, r.st.ino, r.st.rdev, st.Mode, st.Ino, st.Rdev)
		case st.Mode&unix.S_IFMT == unix.S_IFREG && (r.st.size != st.Size || r.st.dev != st.Dev):
			return fmt.Errorf("fd %d: size %d dev %#x, fstat says %d %#x", c.fd, r.st.size, r.st.dev, st.Size, st.Dev)
		case uint32(fl)&^unix.O_LARGEFILE != r.flags&^(unix.O_LARGEFILE|unix.O_CLOEXEC):
			return fmt.Errorf("fd %d: flags %#o, fcntl says %#o", c.fd, r.flags, fl)
		case r.access() != accessOf(uint32(fl)):
			return fmt.Errorf("fd %d: open mode %q, fcntl says %q", c.fd, r.access(), accessOf(uint32(fl)))
		case want != "" && !bytes.Equal(r.link, []byte(want)):
			return fmt.Errorf("fd %d: link %q, want %q", c.fd, r.link, want)
		case r.link == nil:
			return fmt.Errorf("fd %d: no link", c.fd)
		}
	}
	return nil
}

// iterPossible reports whether the Scanner may read descriptors with the
// iterator: not configured off, and not found unusable.
func (sc *Scanner) iterPossible() bool {
	return !sc.cfg.ProcfsFDs && sc.cfg.ProcRoot == "/proc" && sc.iterErr == nil
}

// fdIterator returns the process's iterator, loading it on first use,
// or nil when it cannot be used.
func (sc *Scanner) fdIterator() *fdIter {
	if !sc.iterPossible() {
		return nil
	}
	it, err, done := loadedFDIter()
	if !done {
		return nil
	}
	sc.iterErr = err
	return it
}

// readIter reads the descriptors of pids into the Scanner's records and
// returns them, or nil if it cannot.
func (sc *Scanner) readIter(pids []int) *fdRecs {
	it := sc.fdIterator()
	if it == nil {
		return nil
	}
	if sc.recs == nil {
		sc.recs = &fdRecs{}
	}
	if it.read(pids, sc.recs) != nil {
		return nil // procfs this time
	}
	return sc.recs
}

// An iterator pass walks every open file of the machine, about 0.2 µs
// each, plus about 60 µs to set up; procfs costs about 4 µs per
// descriptor of the tree. So a pass pays when the tree holds more than a
// twentieth of the machine's open files: on a busy host, a small app is
// read through procfs.
const (
	iterFileCost = 20  // procfs cost of a tree descriptor, in iterator files
	iterSetup    = 300 // set-up cost of a pass, in iterator files
)

// iterPays reports whether reading treeFDs descriptors with one iterator
// pass costs less than through procfs, from the machine's count of open
// files (/proc/sys/fs/file-nr, kept open).
func (sc *Scanner) iterPays(treeFDs int) bool {
	if sc.fileNr <= 0 {
		fd, err := sc.r.openat(unix.AT_FDCWD, "/proc/sys/fs/file-nr", unix.O_RDONLY|unix.O_CLOEXEC)
		if err != nil {
			return true
		}
		sc.fileNr = fd
	}
	b, err := sc.r.preadAll(sc.fileNr, true)
	if err != nil {
		return true
	}
	fields := bytes.Fields(b)
	if len(fields) == 0 {
		return true
	}
	n, ok := atoiBytes(fields[0])
	if !ok {
		return true
	}
	return sc.forceIter || treeFDs*iterFileCost > n+iterSetup
}

// FDSource says how the last scan read descriptors: "bpf-iterator" (all
// of them, but links too long for a record), or "procfs" and why.
func (sc *Scanner) FDSource() string {
	switch {
	case sc.cfg.ProcfsFDs:
		return "procfs (configured)"
	case sc.cfg.ProcRoot != "/proc":
		return "procfs (ProcRoot " + sc.cfg.ProcRoot + ")"
	case sc.iterErr != nil:
		return "procfs (bpf iterator: " + sc.iterErr.Error() + ")"
	case sc.lastSource != "":
		return sc.lastSource
	}
	return "procfs (no scan yet)"
}

// FDIteratorStatus loads the BPF iterator if it is not yet (which takes
// tens of milliseconds) and returns nil if scans can use it, or why not.
func FDIteratorStatus() error {
	_, err := loadFDIter()
	return err
}
