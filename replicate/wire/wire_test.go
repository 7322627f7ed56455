package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"doppel/replicate/datafile"
	"doppel/replicate/store"
	"doppel/replicate/store/storetest"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func testWireConfig() Config {
	c := DefaultConfig()
	c.Logger = quiet()
	c.ErrorTimeout = 500 * time.Millisecond
	return c
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	cfg := store.DefaultConfig()
	cfg.Logger = quiet()
	s, err := store.Open(filepath.Join(t.TempDir(), "store"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// op is the sending side of a test: an app's memory, its image and data
// directory, and a store with its epochs.
type op struct {
	t    testing.TB
	st   *store.Store
	app  string
	mem  []byte
	im   *storetest.Image
	data string
	prev *datafile.Set
	n    uint64
	srcs map[uint64]string
	term uint64 // cluster term recorded in its epochs
}

func newOP(t testing.TB, app string, pages int) *op {
	o := &op{t: t, st: openStore(t), app: app, mem: storetest.Memory(1, pages), data: filepath.Join(t.TempDir(), "data"), srcs: map[uint64]string{}}
	o.im = storetest.SimpleImage(o.mem)
	if err := os.MkdirAll(o.data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(o.data, "db"), storetest.Memory(2, 64), 0o644); err != nil {
		t.Fatal(err)
	}
	return o
}

// checkpoint commits the next epoch from the current memory and data.
func (o *op) checkpoint() uint64 {
	t := o.t
	t.Helper()
	o.n++
	dir := filepath.Join(t.TempDir(), "img")
	if err := o.im.Write(dir); err != nil {
		t.Fatal(err)
	}
	o.srcs[o.n] = dir
	tx, err := o.st.Begin(o.app, o.n, o.n-1)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	set, counts, err := datafile.Snapshot([]string{o.data}, o.prev, tx, datafile.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	o.prev = set
	tx.SetData(set)
	if err := tx.AddImageDir(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Commit(store.Manifest{Term: 3, Barrier: 77, Data: counts, ClusterTerm: o.term}); err != nil {
		t.Fatal(err)
	}
	return o.n
}

type result struct {
	ep    *store.Epoch
	stats Stats
	err   error
}

// transfer runs Send and Receive over the two ends of a connection.
func transfer(t testing.TB, from *store.Store, app string, n uint64, to *store.Store, sconn, rconn io.ReadWriter) (Stats, result) {
	t.Helper()
	// As callers must, each side closes its connection when it fails.
	ch := make(chan result, 1)
	go func() {
		ep, st, err := Receive(context.Background(), rconn, to, testWireConfig())
		if c, ok := rconn.(io.Closer); ok && err != nil {
			_ = c.Close()
		}
		ch <- result{ep, st, err}
	}()
	sst, serr := Send(context.Background(), sconn, from, app, n, testWireConfig())
	if c, ok := sconn.(io.Closer); ok && serr != nil {
		_ = c.Close()
	}
	var r result
	select {
	case r = <-ch:
	case <-time.After(60 * time.Second):
		t.Fatal("receiver did not finish")
	}
	if serr != nil && r.err == nil {
		t.Fatalf("send failed, receive succeeded: %v", serr)
	}
	if serr != nil {
		r.err = errors.Join(r.err, serr)
	}
	return sst, r
}

func pipe(t testing.TB) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

func tcp(t testing.TB) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

func sameDir(t testing.TB, a, b string) {
	t.Helper()
	ea, _ := os.ReadDir(a)
	eb, _ := os.ReadDir(b)
	if len(ea) != len(eb) || len(ea) == 0 {
		t.Fatalf("%d vs %d entries", len(ea), len(eb))
	}
	for i := range ea {
		ca, _ := os.ReadFile(filepath.Join(a, ea[i].Name()))
		cb, err := os.ReadFile(filepath.Join(b, eb[i].Name()))
		if ea[i].Name() != eb[i].Name() || err != nil || !bytes.Equal(ca, cb) {
			t.Fatalf("%s differs from %s (%v)", ea[i].Name(), eb[i].Name(), err)
		}
	}
}

func materialise(t testing.TB, s *store.Store, app string, n uint64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "m")
	if err := s.Materialise(context.Background(), app, n, dir); err != nil {
		t.Fatalf("materialise %d: %v", n, err)
	}
	return dir
}

func TestSendReceiveFullThenIncremental(t *testing.T) {
	for _, kind := range []string{"pipe", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			conns := pipe
			if kind == "tcp" {
				conns = tcp
			}
			o := newOP(t, "app", 4096)
			sb := openStore(t)

			n1 := o.checkpoint()
			a, b := conns(t)
			full, r := transfer(t, o.st, "app", n1, sb, a, b)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if full.Delta || full.Wanted != full.Unique || full.Pages == 0 || full.Blocks == 0 || full.Blobs == 0 {
				t.Fatalf("full send stats %+v", full)
			}
			if r.stats.Wanted != full.Wanted || r.stats.DataRaw != full.DataRaw || r.stats.DataWire != full.DataWire {
				t.Fatalf("receiver stats %+v differ from sender's %+v", r.stats, full)
			}
			if full.Ratio() > 0.7 || full.Ratio() < 0.3 {
				t.Errorf("compression ratio %.2f outside what the synthetic memory gives", full.Ratio())
			}
			if r.ep.Manifest.Barrier != 77 || r.ep.Manifest.Term != 3 || r.ep.Manifest.Pages.Scanned != 4096 {
				t.Fatalf("received manifest %+v", r.ep.Manifest)
			}
			sameDir(t, o.srcs[n1], materialise(t, sb, "app", n1))

			// 1% of the pages and one data block change.
			storetest.Dirty(o.mem, 0.01, 5)
			f, _ := os.OpenFile(filepath.Join(o.data, "db"), os.O_WRONLY, 0)
			_, _ = f.WriteAt([]byte("changed"), 4096*10)
			_ = f.Close()
			_ = os.Chtimes(filepath.Join(o.data, "db"), time.Now().Add(time.Hour), time.Now().Add(time.Hour))
			n2 := o.checkpoint()
			a, b = conns(t)
			inc, r := transfer(t, o.st, "app", n2, sb, a, b)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !inc.Delta || inc.Pages != 41 || inc.Blocks != 1 {
				t.Errorf("incremental stats: delta %v pages %d blocks %d, want delta, 41 pages, 1 block", inc.Delta, inc.Pages, inc.Blocks)
			}
			ratio := float64(inc.WireSent) / float64(full.WireSent)
			t.Logf("full: %d bytes on the wire (%d content raw), incremental: %d (%.2f%%), description %d -> %d",
				full.WireSent, full.DataRaw, inc.WireSent, 100*ratio, full.MetaRaw, inc.MetaRaw)
			if ratio > 0.03 {
				t.Errorf("incremental epoch costs %.2f%% of the full epoch on the wire, want <= 3%%", 100*ratio)
			}
			sameDir(t, o.srcs[n2], materialise(t, sb, "app", n2))
			ep2, err := sb.Load("app", n2)
			if err != nil || ep2.Data == nil {
				t.Fatalf("data set not received: %v", err)
			}
			root := t.TempDir()
			if _, err := datafile.Restore(ep2.Data, root, sb); err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(filepath.Join(o.data, "db"))
			got, _ := os.ReadFile(filepath.Join(root, o.data, "db"))
			if !bytes.Equal(want, got) {
				t.Fatal("restored data file differs")
			}

			// The same epoch again: nothing crosses.
			a, b = conns(t)
			again, r := transfer(t, o.st, "app", n2, sb, a, b)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !again.AlreadyHad || again.WireSent > 200 {
				t.Fatalf("resend: %+v", again)
			}
		})
	}
}

func TestSendToReceiverHoldingThePages(t *testing.T) {
	o := newOP(t, "app", 1024)
	n := o.checkpoint()
	sb := openStore(t)
	a, b := pipe(t)
	if _, r := transfer(t, o.st, "app", n, sb, a, b); r.err != nil {
		t.Fatal(r.err)
	}
	// Another app with the same memory: only its description crosses.
	o2 := newOP(t, "twin", 1024)
	n2 := o2.checkpoint()
	a, b = pipe(t)
	st, r := transfer(t, o2.st, "twin", n2, sb, a, b)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if st.Wanted != 0 || st.Pages != 0 || st.DataRaw != 0 {
		t.Fatalf("pages sent although the receiver holds them: %+v", st)
	}
	sameDir(t, o2.srcs[n2], materialise(t, sb, "twin", n2))
}

// relay copies src to dst, passing each byte through fn (which may change
// it or end the copy), then closes dst.
func relay(dst io.WriteCloser, src io.Reader, fn func(off int64, b []byte) (n int, stop bool)) {
	buf := make([]byte, 32<<10)
	var off int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			k, stop := fn(off, buf[:n])
			if _, werr := dst.Write(buf[:k]); werr != nil || stop {
				_ = dst.Close()
				return
			}
			off += int64(n)
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

// broken returns sender and receiver ends of a connection whose
// sender-to-receiver direction goes through fn.
func broken(t testing.TB, fn func(off int64, b []byte) (int, bool)) (net.Conn, net.Conn) {
	s, s2 := pipe(t)
	r2, r := pipe(t)
	go relay(r2, s2, fn)
	go func() {
		_, _ = io.Copy(s2, r2)
		_ = s2.Close()
	}()
	return s, r
}

func TestTamperedOrTruncatedStreamKeepsPreviousEpoch(t *testing.T) {
	o := newOP(t, "app", 2048)
	n1 := o.checkpoint()
	storetest.Dirty(o.mem, 0.05, 9)
	n2 := o.checkpoint()

	// A clean transfer of epoch 2 to measure the stream.
	probe := openStore(t)
	a, b := pipe(t)
	if _, r := transfer(t, o.st, "app", n1, probe, a, b); r.err != nil {
		t.Fatal(r.err)
	}
	a, b = pipe(t)
	clean, r := transfer(t, o.st, "app", n2, probe, a, b)
	if r.err != nil {
		t.Fatal(r.err)
	}
	total := clean.WireSent

	cases := map[string]struct {
		fn   func(off int64, b []byte) (int, bool)
		want error
	}{}
	for _, at := range []int64{5, 14, 40, total / 50, total / 2, total - 30, total - 10} {
		cases["flip byte "+itoa(at)] = struct {
			fn   func(off int64, b []byte) (int, bool)
			want error
		}{func(off int64, b []byte) (int, bool) {
			if at >= off && at < off+int64(len(b)) {
				b[at-off] ^= 0x40
			}
			return len(b), false
		}, nil}
	}
	for _, at := range []int64{3, 30, total / 3, total - 1} {
		cases["truncate at "+itoa(at)] = struct {
			fn   func(off int64, b []byte) (int, bool)
			want error
		}{func(off int64, b []byte) (int, bool) {
			if off+int64(len(b)) > at {
				return int(at - off), true
			}
			return len(b), false
		}, io.ErrUnexpectedEOF}
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			sb := openStore(t)
			a, b := pipe(t)
			if _, r := transfer(t, o.st, "app", n1, sb, a, b); r.err != nil {
				t.Fatal(r.err)
			}
			s, rc := broken(t, c.fn)
			_, r := transfer(t, o.st, "app", n2, sb, s, rc)
			if r.err == nil {
				t.Fatal("damaged stream accepted")
			}
			if c.want != nil && !errors.Is(r.err, c.want) {
				t.Errorf("error %v, want %v", r.err, c.want)
			}
			if c.want == nil && !errors.Is(r.err, ErrChecksum) && !errors.Is(r.err, ErrProtocol) {
				t.Errorf("error %v, want a checksum or protocol error", r.err)
			}
			t.Logf("%v", r.err)
			if ns, _ := sb.Epochs("app"); len(ns) != 1 || ns[0] != n1 {
				t.Fatalf("epochs after damaged transfer: %v", ns)
			}
			sameDir(t, o.srcs[n1], materialise(t, sb, "app", n1))
			ents, _ := os.ReadDir(filepath.Join(sb.Dir(), "packs"))
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), ".tmp") {
					t.Errorf("leftover %s", e.Name())
				}
			}
			// The store still takes the epoch over a sound connection.
			a, b = pipe(t)
			if _, r := transfer(t, o.st, "app", n2, sb, a, b); r.err != nil {
				t.Fatal(r.err)
			}
			sameDir(t, o.srcs[n2], materialise(t, sb, "app", n2))
		})
	}
}

func itoa(v int64) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for v > 0 {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
	}
	return string(b)
}

func TestVersionMismatch(t *testing.T) {
	sb := openStore(t)
	a, b := pipe(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := Receive(context.Background(), b, sb, testWireConfig())
		done <- err
	}()
	pre := binary.LittleEndian.AppendUint32(magic[:], Version+1)
	if _, err := a.Write(pre); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrVersion) {
		t.Fatalf("Receive = %v, want ErrVersion", err)
	}
}

func TestHostileLengthRejectedBeforeAllocation(t *testing.T) {
	var h [headerSize]byte
	h[0] = byte(MsgMeta)
	h[4], h[5], h[6], h[7] = 0xff, 0xff, 0xff, 0x7f
	h[8], h[9], h[10], h[11] = 0xff, 0xff, 0xff, 0x7f
	fr := &frameReader{r: bytes.NewReader(h[:])}
	if _, err := fr.read(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("read = %v, want ErrProtocol", err)
	}
	if cap(fr.wire) != 0 || cap(fr.raw) != 0 {
		t.Fatalf("buffers grown to %d/%d for a rejected header", cap(fr.wire), cap(fr.raw))
	}
}

func TestCancelInterruptsSend(t *testing.T) {
	o := newOP(t, "app", 256)
	n := o.checkpoint()
	a, _ := pipe(t) // nobody reads the other end
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Send(ctx, a, o.st, "app", n, testWireConfig())
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Send = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send did not return after cancel")
	}
}

func TestDeltaRoundTrip(t *testing.T) {
	o := newOP(t, "app", 1500)
	o.checkpoint()
	storetest.Dirty(o.mem, 0.02, 3)
	o.im.Procs[0].Regions = append(o.im.Procs[0].Regions[1:], o.im.Procs[0].Regions[0]) // reordered mappings
	n2 := o.checkpoint()
	p, _ := o.st.Load("app", n2-1)
	ep, _ := o.st.Load("app", n2)
	enc, err := encodeDelta(ep, p)
	if err != nil {
		t.Fatal(err)
	}
	full, _ := ep.MarshalBinary()
	if len(enc) > len(full)/10 {
		t.Errorf("delta %d bytes, full %d", len(enc), len(full))
	}
	got, err := decodeDelta(enc, p, DefaultConfig().MaxHashes)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := got.MarshalBinary()
	if !bytes.Equal(a, full) {
		t.Fatal("delta round trip differs")
	}
	// Every truncation fails cleanly.
	var wg sync.WaitGroup
	for i := 0; i < len(enc); i += 1 + len(enc)/200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := decodeDelta(enc[:i], p, DefaultConfig().MaxHashes); err == nil {
				t.Errorf("truncated delta (%d of %d bytes) decoded", i, len(enc))
			}
		}()
	}
	wg.Wait()
}

func TestReceiverWithoutParentGetsFullDescription(t *testing.T) {
	o := newOP(t, "app", 512)
	o.checkpoint()
	storetest.Dirty(o.mem, 0.1, 4)
	n2 := o.checkpoint()
	sb := openStore(t)
	a, b := pipe(t)
	st, r := transfer(t, o.st, "app", n2, sb, a, b)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if st.Delta || st.Wanted != st.Unique {
		t.Fatalf("stats %+v: want a full description and all content", st)
	}
	sameDir(t, o.srcs[n2], materialise(t, sb, "app", n2))
}

// divergedPair returns two OPs of one app that share epoch 1 and then
// each made an epoch 2 of their own (different pages dirtied), as a
// deposed OP and the clone promoted in its place do after a partition.
func divergedPair(t *testing.T, seed uint64) (a, b *op) {
	t.Helper()
	a = newOP(t, "app", 256)
	a.term = 1
	a.checkpoint()
	b = newOP(t, "app", 256)
	b.data = a.data // the same data-file paths
	b.term = 2      // promoted
	c1, c2 := pipe(t)
	if _, r := transfer(t, a.st, "app", 1, b.st, c1, c2); r.err != nil {
		t.Fatal(r.err)
	}
	b.n, b.prev = 1, a.prev
	storetest.Dirty(a.mem, 0.05, 11+100*seed)
	a.checkpoint()
	storetest.Dirty(b.mem, 0.05, 22+100*seed)
	b.checkpoint()
	return a, b
}

func digest(t *testing.T, s *store.Store, n uint64) store.Hash {
	t.Helper()
	ep, err := s.Load("app", n)
	if err != nil {
		t.Fatal(err)
	}
	d, err := ep.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDivergedEpochIsReplaced: a receiver holding its own epoch of the
// number sent must not acknowledge it as the sender's; it drops its own
// and takes the sender's.
func TestDivergedEpochIsReplaced(t *testing.T) {
	for seed := range uint64(3) {
		a, b := divergedPair(t, seed)
		c1, c2 := pipe(t)
		st, r := transfer(t, b.st, "app", 2, a.st, c1, c2)
		if r.err != nil {
			t.Fatal(r.err)
		}
		if st.AlreadyHad || !st.Delta {
			t.Fatalf("seed %d: stats %+v: want epoch 2 received as a delta on the common epoch 1", seed, st)
		}
		if digest(t, a.st, 2) != digest(t, b.st, 2) {
			t.Fatalf("seed %d: the receiver's epoch 2 is not the sender's", seed)
		}
		sameDir(t, b.srcs[2], materialise(t, a.st, "app", 2))
	}
}

// TestDivergedParentIsNotUsed: a delta must never be decoded against the
// receiver's own epoch of the parent's number; the receiver drops it and
// gets the full description.
func TestDivergedParentIsNotUsed(t *testing.T) {
	for seed := range uint64(6) {
		a, b := divergedPair(t, seed)
		storetest.Dirty(b.mem, 0.05, 33+100*seed)
		b.checkpoint()
		c1, c2 := pipe(t)
		st, r := transfer(t, b.st, "app", 3, a.st, c1, c2)
		if r.err != nil {
			t.Fatalf("seed %d: %v", seed, r.err)
		}
		if st.Delta {
			t.Fatalf("seed %d: a delta on a parent the receiver holds another version of", seed)
		}
		if ns, _ := a.st.Epochs("app"); !slices.Equal(ns, []uint64{1, 3}) {
			t.Fatalf("seed %d: receiver holds epochs %v, want [1 3] (its own 2 dropped)", seed, ns)
		}
		if digest(t, a.st, 3) != digest(t, b.st, 3) {
			t.Fatalf("seed %d: the receiver's epoch 3 is not the sender's", seed)
		}
		sameDir(t, b.srcs[3], materialise(t, a.st, "app", 3))
	}
}

// TestDivergedEpochBeingReadIsKept: an epoch to drop that is being read
// fails the transfer (ErrDiverged) and stays as it was.
func TestDivergedEpochBeingReadIsKept(t *testing.T) {
	a, b := divergedPair(t, 0)
	before := digest(t, a.st, 2)
	_, release, err := a.st.Pin("app", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	c1, c2 := pipe(t)
	if _, r := transfer(t, b.st, "app", 2, a.st, c1, c2); !errors.Is(r.err, ErrDiverged) {
		t.Fatalf("receive = %v, want ErrDiverged", r.err)
	}
	if digest(t, a.st, 2) != before {
		t.Fatal("the pinned epoch changed")
	}
}

// TestOlderTermEpochsAboveAreDropped: epochs a receiver holds above the
// one received, made at an older cluster term (a deposed OP ran ahead in
// numbers), are dropped, so they never pass for the newest; those of the
// sender's own term stay (they can arrive out of order).
func TestOlderTermEpochsAboveAreDropped(t *testing.T) {
	a := newOP(t, "app", 256)
	a.term = 1
	a.checkpoint()
	b := newOP(t, "app", 256)
	b.data = a.data
	c1, c2 := pipe(t)
	if _, r := transfer(t, a.st, "app", 1, b.st, c1, c2); r.err != nil {
		t.Fatal(r.err)
	}
	b.n, b.prev, b.term = 1, a.prev, 2
	for seed := range uint64(4) {
		storetest.Dirty(a.mem, 0.05, 40+seed)
		a.checkpoint() // 2..5 at term 1
	}
	if _, err := a.st.Discard("app", []uint64{2, 3}); err != nil { // retention
		t.Fatal(err)
	}
	storetest.Dirty(b.mem, 0.05, 50)
	b.checkpoint() // 2 at term 2
	storetest.Dirty(b.mem, 0.05, 51)
	b.checkpoint() // 3 at term 2
	c1, c2 = pipe(t)
	if _, r := transfer(t, b.st, "app", 3, a.st, c1, c2); r.err != nil {
		t.Fatal(r.err)
	}
	if ns, _ := a.st.Epochs("app"); !slices.Equal(ns, []uint64{1, 3}) {
		t.Fatalf("after epoch 3 of term 2 the receiver holds %v, want [1 3]", ns)
	}
	c1, c2 = pipe(t)
	if _, r := transfer(t, b.st, "app", 2, a.st, c1, c2); r.err != nil {
		t.Fatal(r.err)
	}
	if ns, _ := a.st.Epochs("app"); !slices.Equal(ns, []uint64{1, 2, 3}) {
		t.Fatalf("after epoch 2 of term 2 the receiver holds %v, want [1 2 3]", ns)
	}
	for _, n := range []uint64{2, 3} {
		if digest(t, a.st, n) != digest(t, b.st, n) {
			t.Fatalf("epoch %d is not the sender's", n)
		}
	}
}

// TestDeposedSenderAddsNothingAbove: a deposed OP's epoch numbered above
// all a receiver holds, sent whole (the receiver lacks its parent), must
// not be taken: it would pass for the newest over the newer OP's epochs.
func TestDeposedSenderAddsNothingAbove(t *testing.T) {
	a, b := divergedPair(t, 0) // a's 2 of term 1, b's 2 of term 2
	storetest.Dirty(a.mem, 0.05, 60)
	a.checkpoint() // 3 at term 1
	storetest.Dirty(a.mem, 0.05, 61)
	a.checkpoint() // 4 at term 1
	c1, c2 := pipe(t)
	if _, r := transfer(t, a.st, "app", 4, b.st, c1, c2); !errors.Is(r.err, ErrDiverged) {
		t.Fatalf("receive of epoch 4 from a deposed sender = %v, want ErrDiverged", r.err)
	}
	if ns, _ := b.st.Epochs("app"); !slices.Equal(ns, []uint64{1, 2}) {
		t.Fatalf("the receiver holds %v, want [1 2]", ns)
	}
}

// TestDeposedSenderDropsNothingNewer: a sender of an older cluster term
// (a deposed OP whose stream outlived its role) cannot make a receiver
// drop an epoch a newer OP made.
func TestDeposedSenderDropsNothingNewer(t *testing.T) {
	a, b := divergedPair(t, 0) // a's 2 of term 1, b's 2 of term 2
	before := digest(t, b.st, 2)
	c1, c2 := pipe(t)
	if _, r := transfer(t, a.st, "app", 2, b.st, c1, c2); !errors.Is(r.err, ErrDiverged) {
		t.Fatalf("receive from a deposed sender = %v, want ErrDiverged", r.err)
	}
	if digest(t, b.st, 2) != before {
		t.Fatal("the newer OP's epoch 2 changed")
	}
}
