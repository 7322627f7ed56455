package introspect

import (
	"encoding/binary"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Samples below were captured from /proc on Linux 6.18.

func TestParseStat(t *testing.T) {
	// A comm with spaces and parentheses ends at the last ')'.
	b := []byte("18026 (my (odd) name) R 18024 18024 2412 0 -1 4194304 101 0 0 0 7 3 0 0 20 0 4 0 150401 3133440 412 18446744073709551615 94496436297728 0\n")
	st, err := parseStat(b)
	if err != nil {
		t.Fatal(err)
	}
	want := statInfo{PID: 18026, Comm: "my (odd) name", State: "R", PPID: 18024, PGID: 18024, SID: 2412,
		UTime: 7, STime: 3, NumThreads: 4, StartTime: 150401, RSSPages: 412, Flags: 4194304}
	if st != want {
		t.Errorf("parseStat = %+v, want %+v", st, want)
	}
	if d := ticksToDuration(st.UTime + st.STime); d != 100*time.Millisecond {
		t.Errorf("cpu time %v, want 100ms", d)
	}
	for _, bad := range []string{"", "12 no-parens R 1", "x (c) R 1 2"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	b := []byte("Name:\tappsim\nState:\tS (sleeping)\nTgid:\t796\nNSpid:\t796\t1\nPPid:\t753\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\nVmRSS:\t    5016 kB\nThreads:\t5\n")
	st := parseStatus(b)
	if st.UID != 1000 || st.TracerPID != 0 || !reflect.DeepEqual(st.NSPID, []int{796, 1}) || st.VmRSS != 5016*1024 || !st.HasVmRSS {
		t.Errorf("parseStatus = %+v", st)
	}
	if st := parseStatus([]byte("Name:\tk\nTracerPid:\t42\n")); st.TracerPID != 42 || st.HasVmRSS {
		t.Errorf("kernel-thread-like status = %+v", st)
	}
}

func TestParseCmdlineAndChildren(t *testing.T) {
	if got := parseCmdline([]byte("sh\x00-c\x00echo hi\x00")); !reflect.DeepEqual(got, []string{"sh", "-c", "echo hi"}) {
		t.Errorf("cmdline %q", got)
	}
	if got := parseCmdline(nil); got != nil {
		t.Errorf("empty cmdline %q", got)
	}
	var kids []int
	parseChildren([]byte("12 345 6789 "), func(p int) { kids = append(kids, p) })
	if !reflect.DeepEqual(kids, []int{12, 345, 6789}) {
		t.Errorf("children %v", kids)
	}
}

const smapsSample = `5586b4e19000-5586b4e1b000 r--p 00000000 fe:00 247278                     /usr/bin/head
Size:                  8 kB
Rss:                   8 kB
Pss:                   4 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Swap:                  0 kB
VmFlags: rd mr mw me 
7f6ee2217000-7f6ee2227000 rw-s 00000000 00:01 1182                       /memfd:doppel-appsim (deleted)
Size:                 64 kB
Rss:                   4 kB
Pss:                   2 kB
Shared_Dirty:          4 kB
Private_Dirty:         0 kB
Swap:                  0 kB
7f6e9961c000-7f6e9971c000 rw-s 00000000 00:01 10                         /SYSV00000000 (deleted)
Rss:                   0 kB
7f0000000000-7f0000001000 rw-s 00000000 00:01 2050                       /dev/zero (deleted)
7f0000002000-7f0000004000 rw-p 00000000 00:00 0 
Rss:                   8 kB
Private_Dirty:         8 kB
Swap:                  4 kB
7f0000010000-7f0000011000 rw-s 00000000 fd:01 77                         /var/lib/app/data.db
7f0000020000-7f0000021000 r--s 00000000 00:19 88                         /dev/shm/seg
55aa4042f000-55aa40450000 rw-p 00000000 00:00 0                          [heap]
7ffd7f2f1000-7ffd7f312000 rw-p 00000000 00:00 0                          [stack]
7ffd7f3e5000-7ffd7f3e7000 r--p 00000000 00:00 0                          [vvar]
7ffd7f3e7000-7ffd7f3e9000 r--p 00000000 00:00 0                          [vvar_vclock]
7ffd7f3e9000-7ffd7f3eb000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
7f0000030000-7f0000031000 r-xp 00000000 00:00 0                          [uprobes]
`

func TestParseMaps(t *testing.T) {
	var got []Mapping
	if err := parseMaps([]byte(smapsSample), nil, func(m *Mapping) { got = append(got, *m) }); err != nil {
		t.Fatal(err)
	}
	wantKinds := []MapKind{MapFilePrivate, MapMemfd, MapSysVShm, MapAnonShared, MapAnonPrivate, MapFileShared, MapFileShared,
		MapHeap, MapStack, MapVVAR, MapVVAR, MapVDSO, MapVsyscall, MapSpecial}
	if len(got) != len(wantKinds) {
		t.Fatalf("%d mappings, want %d", len(got), len(wantKinds))
	}
	for i, k := range wantKinds {
		if got[i].Kind != k {
			t.Errorf("mapping %d (%s): kind %s, want %s", i, got[i].Path, got[i].Kind, k)
		}
	}
	m := got[1]
	if m.Start != 0x7f6ee2217000 || m.End != 0x7f6ee2227000 || m.Size != 64<<10 || m.Perms != "rw-s" || m.Dev != "00:01" ||
		m.Inode != 1182 || m.Path != "/memfd:doppel-appsim (deleted)" || m.RSS != 4<<10 || m.PSS != 2<<10 || m.Dirty != 4<<10 {
		t.Errorf("memfd mapping %+v", m)
	}
	if a := got[4]; a.RSS != 8<<10 || a.Dirty != 8<<10 || a.Swap != 4<<10 || a.Path != "" {
		t.Errorf("anon mapping %+v", a)
	}
	if err := parseMaps([]byte("zz-yy rw-p 0 0:0 0\n"), nil, func(*Mapping) {}); err != nil {
		t.Errorf("lines not starting with a hex digit are size lines: %v", err)
	}
	if err := parseMaps([]byte("7f00-zz rw-p 0 00:00 0\n"), nil, func(*Mapping) {}); err == nil {
		t.Errorf("malformed header accepted")
	}
}

func TestParseFdinfo(t *testing.T) {
	fi := parseFdinfo([]byte("pos:\t8518\nflags:\t0102001\nmnt_id:\t24\nino:\t3\n"), false)
	if fi.Pos != 8518 || fi.Flags != 0102001 || fi.MntID != 24 || fi.Ino != 3 || fi.Extra != nil {
		t.Errorf("regular fdinfo %+v", fi)
	}
	if a := accessOf(fi.Flags); a != "w" {
		t.Errorf("access of O_WRONLY|O_APPEND = %q", a)
	}
	epoll := parseFdinfo([]byte("pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\ntfd:        3 events:       1f data:                3  pos:0 ino:98d16 sdev:f\ntfd:        5 events:       19 data:                5  pos:0 ino:98d17 sdev:f\n"), true)
	if epoll.Extra["targets"] != "2" || accessOf(epoll.Flags) != "rw" {
		t.Errorf("epoll fdinfo %+v", epoll)
	}
	ino := parseFdinfo([]byte("pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1038\ninotify wd:1 ino:1a2b sdev:fe00001 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b1a000000000000\n"), true)
	if ino.Extra["watches"] != "1" {
		t.Errorf("inotify fdinfo %+v", ino)
	}
	efd := parseFdinfo([]byte("pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\neventfd-count:                0\neventfd-id: 12\neventfd-semaphore: 0\n"), true)
	if efd.Extra["eventfd-count"] != "0" || efd.Extra["eventfd-id"] != "12" {
		t.Errorf("eventfd fdinfo %+v", efd)
	}
	ptmx := parseFdinfo([]byte("pos:\t0\nflags:\t0100002\nmnt_id:\t25\nino:\t2\ntty-index:\t3\n"), true)
	if ptmx.Extra["tty-index"] != "3" {
		t.Errorf("ptmx fdinfo %+v", ptmx)
	}
	if accessOf(unix.O_PATH) != "" || accessOf(unix.O_RDONLY) != "r" || accessOf(unix.O_RDWR) != "rw" {
		t.Errorf("accessOf")
	}
	if accessOfLinkMode(0o700) != "rw" || accessOfLinkMode(0o500) != "r" || accessOfLinkMode(0o300) != "w" {
		t.Errorf("accessOfLinkMode")
	}
}

func TestParseSysV(t *testing.T) {
	shm := "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n" +
		"1148964294          0   644                  4096 21572     0      0     0     0     0     0          0          0 1795733159                     0                     0\n" +
		"         0         10  1600               1048576   796   805      2     0     0     0     0 1795733518          0 1795733518                  4096                     0\n"
	objs, err := parseSysV([]byte(shm), "shm", 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("%d shm objects", len(objs))
	}
	if o := objs[0]; o.Key != 1148964294 || o.ID != 0 || o.Perms != 0o644 || o.Size != 4096 || o.CPID != 21572 || o.Removed || o.IPCNS != 7 {
		t.Errorf("shm 0 %+v", o)
	}
	if o := objs[1]; o.ID != 10 || !o.Removed || o.Perms != 0o600 || o.Attached != 2 || o.LPID != 805 {
		t.Errorf("removed shm %+v", o)
	}
	msg := "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime\n" +
		"1397024841          0   644          12          3   100   101     0     0     0     0          0          0 1795733159\n"
	objs, err = parseSysV([]byte(msg), "msg", 7)
	if err != nil || len(objs) != 1 || objs[0].Messages != 3 || objs[0].Bytes != 12 || objs[0].LPID != 100 || objs[0].LRPID != 101 {
		t.Errorf("msg %+v %v", objs, err)
	}
	sem := "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n" +
		"-1858006959          0   644          2     0     0     0     0          0 1795733159\n"
	objs, err = parseSysV([]byte(sem), "sem", 7)
	if err != nil || len(objs) != 1 || objs[0].NSems != 2 || objs[0].Key != -1858006959 {
		t.Errorf("sem %+v %v", objs, err)
	}
	if _, err := parseSysV([]byte("garbage\n"), "shm", 0); err == nil {
		t.Errorf("header without columns accepted")
	}
}

func TestParseProcEvents(t *testing.T) {
	ne := binary.NativeEndian
	msg := func(what uint32, data ...uint32) []byte {
		b := make([]byte, unix.SizeofNlMsghdr+cnMsgLen+procEvHead+4*len(data))
		ne.PutUint32(b[0:], uint32(len(b)))
		ne.PutUint16(b[4:], unix.NLMSG_DONE)
		c := b[unix.SizeofNlMsghdr:]
		ne.PutUint32(c[0:], cnIdxProc)
		ne.PutUint32(c[4:], cnValProc)
		ev := c[cnMsgLen:]
		ne.PutUint32(ev[0:], what)
		for i, d := range data {
			ne.PutUint32(ev[procEvHead+4*i:], d)
		}
		return b
	}
	var b []byte
	b = append(b, msg(procEventFork, 10, 10, 11, 11)...)
	b = append(b, msg(procEventExec, 11, 11)...)
	b = append(b, msg(procEventExit, 11, 11, 0, 17, 10, 10)...)
	b = append(b, msg(0x40 /* gid change: ignored */, 11, 11, 0, 0)...)
	got := parseProcEvents(b, nil)
	want := []procEvent{
		{What: procEventFork, PPID: 10, PTGID: 10, PID: 11, TGID: 11},
		{What: procEventExec, PID: 11, TGID: 11},
		{What: procEventExit, PID: 11, TGID: 11, PPID: 10, PTGID: 10},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseProcEvents = %+v, want %+v", got, want)
	}
	if got := parseProcEvents(b[:10], nil); len(got) != 0 {
		t.Errorf("truncated datagram gave %+v", got)
	}
}

func TestSmallHelpers(t *testing.T) {
	if n, ok := bracketNum([]byte("socket:[75051]")); !ok || n != 75051 {
		t.Errorf("bracketNum socket = %d %v", n, ok)
	}
	if _, ok := bracketNum([]byte("/tmp/x[1]y")); ok {
		t.Errorf("bracketNum accepted a path")
	}
	if nsInode("net:[4026531833]") != 4026531833 || nsLinkType("net:[4026531833]") != "net" || nsLinkType("foo:[1]") != "" {
		t.Errorf("namespace link helpers")
	}
	if unixName("\x00abstract") != "@abstract" || unixName("/run/x.sock\x00") != "/run/x.sock" {
		t.Errorf("unixName")
	}
	if k, fam := kindOfProtoName("TCPv6"); k != KindTCP || fam != "inet6" {
		t.Errorf("kindOfProtoName TCPv6 = %s %s", k, fam)
	}
	if k, _ := kindOfProtoName("VSOCK"); k != KindSocket {
		t.Errorf("kindOfProtoName VSOCK = %s", k)
	}
	if anonKind("io_uring") != KindIOUring || anonKind("[userfaultfd]") != KindAnonInode || anonKind("bpf-map") != KindBPF {
		t.Errorf("anonKind")
	}
	if !isTTYDev(unix.Mkdev(136, 3)) || !isTTYDev(unix.Mkdev(5, 2)) || isTTYDev(unix.Mkdev(1, 3)) {
		t.Errorf("isTTYDev")
	}
	cfg := DefaultConfig()
	cfg.DataPaths = []string{"/var/lib/app/", "/srv/data"}
	cfg = cfg.normalized()
	for path, want := range map[string]string{
		"/var/lib/app/db": "/var/lib/app", "/var/lib/app": "/var/lib/app", "/var/lib/apple": "", "/srv/data/x/y": "/srv/data", "/tmp/x": "",
	} {
		if got := cfg.dataPathOf(path); got != want {
			t.Errorf("dataPathOf(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestPermsString(t *testing.T) {
	intern := func(b []byte) string { return string(b) }
	for _, p := range []string{"---p", "r--p", "rw-p", "r-xp", "rwxp", "rw-s", "r--s", "---s", "rwxs", "-w-p", "--xs", "rw-x", "pppp", "r-x-"} {
		if got := permsString([]byte(p), intern); got != p {
			t.Errorf("permsString(%q) = %q", p, got)
		}
	}
}
