package replicate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"doppel/replicate/store"
)

// phaseRecorder collects the events of checkpoints.
type phaseRecorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *phaseRecorder) observe(ev Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

// of returns the events of one epoch as "PSB", "/PSB", ... ("/" marks an
// end).
func (r *phaseRecorder) of(epoch uint64) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events {
		if ev.Epoch != epoch {
			continue
		}
		s := string(ev.Phase)
		if ev.End {
			s = "/" + s
			if ev.Err != "" {
				s += "!"
			}
		}
		out = append(out, s)
	}
	return out
}

// checkManifest checks what every epoch of a checkpoint must record.
func checkManifest(t *testing.T, m *store.Manifest) {
	t.Helper()
	p := m.Phases
	if p.PSB <= 0 || p.RM <= 0 || p.SRM <= 0 || p.PRM <= 0 {
		t.Errorf("epoch %d: phase timings PSB %v RM %v SRM %v PRM %v, want all > 0", m.Epoch, p.PSB, p.RM, p.SRM, p.PRM)
	}
	for _, k := range []string{"freezing_time", "frozen_time", "memdump_time", "memwrite_time", "pages_scanned", "pages_written"} {
		if _, ok := m.CRIUStats[k]; !ok {
			t.Errorf("epoch %d: CRIU stat %s missing: %v", m.Epoch, k, m.CRIUStats)
		}
	}
	if m.CRIUStats["frozen_time"] == 0 || m.CRIUStats["memdump_time"] == 0 || m.CRIUStats["pages_scanned"] == 0 {
		t.Errorf("epoch %d: CRIU stats not filled: %v", m.Epoch, m.CRIUStats)
	}
	if m.CRIUVersion == "" || m.Kernel == "" {
		t.Errorf("epoch %d: CRIU version %q kernel %q, want both", m.Epoch, m.CRIUVersion, m.Kernel)
	}
	if m.Pages.Scanned == 0 || m.Bytes.Raw == 0 {
		t.Errorf("epoch %d: pages %+v bytes %+v: nothing captured", m.Epoch, m.Pages, m.Bytes)
	}
}

// TestWholeApp checkpoints a running app of four processes (init, main,
// worker, idle) with pipes between them, a System V shared memory segment,
// a data file it appends to, a TCP listener and an established connection
// whose client is the test, stops it, restores its newest epoch and checks
// that memory, data file, shared memory and the connection all continue
// from that epoch's barrier.
func TestWholeApp(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), nil)
	a := startApp(t, e, "whole", appOpts{shm: true, tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	waitCgroupSize(t, e, a.name, 4)

	// The connection that must survive; it is idle from here until the
	// restore, as a connection behind the ingress proxy is after a barrier.
	held := dial(t, a.port)
	if s := held.state(t); s.nonce != a.nonce || !s.shmOK {
		t.Fatalf("state %+v, want nonce %s and a sound segment", s, a.nonce)
	}

	rec := &phaseRecorder{}
	var atBarrier []byte
	want := 0
	for i := 1; i <= 3; i++ {
		want += 15
		waitTicks(t, a.data, want)
		resumed := 0
		ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{
			Observer: rec.observe,
			Barrier: func(context.Context) (uint64, error) {
				// Frozen: the data file is the barrier's.
				b, err := os.ReadFile(a.data)
				atBarrier = b
				return uint64(1000 + i), err
			},
			Resume: func() { resumed++ },
		})
		if err != nil {
			t.Fatalf("checkpoint %d: %v", i, err)
		}
		m := &ep.Manifest
		if m.Epoch != uint64(i) || m.Parent != uint64(i-1) || m.Barrier != uint64(1000+i) {
			t.Errorf("epoch %d parent %d barrier %d, want %d, %d, %d", m.Epoch, m.Parent, m.Barrier, i, i-1, 1000+i)
		}
		checkManifest(t, m)
		if m.Data.FilesScanned != 1 || m.Data.FilesChanged != 1 {
			t.Errorf("epoch %d data counts %+v: want the data file scanned and changed", i, m.Data)
		}
		if resumed != 1 {
			t.Errorf("epoch %d: Resume called %d times, want 1", i, resumed)
		}
		if got, want := strings.Join(rec.of(uint64(i)), " "), "PSB /PSB RM /RM SRM /SRM PRM /PRM"; got != want {
			t.Errorf("epoch %d: events %q, want %q", i, got, want)
		}
		if frozen(t, e, a.name) {
			t.Fatalf("app frozen after checkpoint %d", i)
		}
	}
	// Default retention keeps the newest two.
	if got := epochNumbers(t, e, a.name); len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Errorf("epochs %v, want [2 3]", got)
	}
	if strings.Contains(e.logs.String(), "stdout.log") || strings.Contains(e.logs.String(), "stderr.log") {
		t.Errorf("the app's own log files were reported by the RM phase:\n%s", e.logs)
	}

	barrier := parseTicks(t, atBarrier)
	checkTicks(t, a, barrier)
	b := len(barrier)
	// Run well past the barrier, then stop: the app loses that progress.
	beforeStop := waitTicks(t, a.data, b+40)
	stopAndWait(t, e, a.name)
	atStop := readTicks(t, a.data)
	if len(atStop) < len(beforeStop) {
		t.Fatalf("data file shrank at stop")
	}
	// The peer of the held connection saw nothing: no FIN, no reset.
	_ = held.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := held.br.ReadByte(); !isTimeout(err) {
		t.Fatalf("held connection after stop: %v, want a read timeout (the stop must not close it)", err)
	}

	st, ep, err := e.Restore(t.Context(), a.name, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Epoch != 3 || st.Term != 2 || !st.Running() {
		t.Fatalf("restored epoch %d term %d running %t, want 3, 2, true", ep.Manifest.Epoch, st.Term, st.Running())
	}
	// The data file went back to the barrier before the app resumed.
	now, err := os.ReadFile(a.data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(now, atBarrier) {
		t.Fatalf("data file after restore does not start with its content at the barrier")
	}
	// The same connection answers, from memory that continues the barrier.
	s := held.state(t)
	if s.nonce != a.nonce {
		t.Fatalf("nonce %s after restore, want %s", s.nonce, a.nonce)
	}
	if s.counter < uint64(b) || s.counter >= uint64(len(atStop)) {
		t.Fatalf("counter %d after restore: want it from the barrier (%d lines), below the %d reached before the stop", s.counter, b, len(atStop))
	}
	if !s.shmOK || s.shm != s.counter {
		t.Fatalf("shared memory holds %d (pattern ok: %t), want the counter %d", s.shm, s.shmOK, s.counter)
	}
	waitCgroupSize(t, e, a.name, 4)
	// History continues without gap or repeat, the segment intact at every
	// tick.
	after := waitTicks(t, a.data, int(s.counter)+20)
	checkTicks(t, a, after)
	if s2 := held.state(t); s2.counter <= s.counter {
		t.Fatalf("counter %d, then %d: the restored app does not run", s.counter, s2.counter)
	}

	// A checkpoint of the restored app works and continues the numbering.
	ep4, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep4.Manifest.Epoch != 4 || ep4.Manifest.Term != 2 {
		t.Errorf("epoch %d term %d after restore, want 4, 2", ep4.Manifest.Epoch, ep4.Manifest.Term)
	}
	checkManifest(t, &ep4.Manifest)
	stopAndWait(t, e, a.name)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestIncrementalPages dirties a known number of pages between epochs and
// checks that the store counts that many pages changed (plus what the Go
// runtime of the app touches by itself), then restores the last epoch of a
// chain of five, and an older one, and compares the app's buffer.
func TestIncrementalPages(t *testing.T) {
	requireE2E(t)
	e := newEngine(t, t.TempDir(), func(c *Config) { c.Store.Retention = 5 })
	a := startApp(t, e, "incr", appOpts{bufMB: 64})
	c := dial(t, a.port)

	// Pages the app and its init change by themselves between two
	// checkpoints: the Go runtime's timers and scheduler (5 to 11 pages
	// measured with no request at all), plus the heap spans and stack first
	// touched while serving the DIRTY and SUM requests, which the parent
	// epoch did not have (34 to 65 pages measured in all with "DIRTY 0").
	const margin = 128
	ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Pages.Changed != ep.Manifest.Pages.Scanned {
		t.Errorf("full epoch: %d of %d pages changed, want all", ep.Manifest.Pages.Changed, ep.Manifest.Pages.Scanned)
	}
	if min := int64(64 << 20 / store.PageSize); ep.Manifest.Pages.Scanned < min {
		t.Errorf("full epoch scanned %d pages, the buffer alone has %d", ep.Manifest.Pages.Scanned, min)
	}
	sums := map[uint64]string{1: c.sum(t)}
	for i, k := range []int{0, 1000, 10, 3000} {
		c.ask(t, "DIRTY "+itoa(k)+" "+itoa(1000+i))
		sum := c.sum(t)
		ep, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
		if err != nil {
			t.Fatal(err)
		}
		m := ep.Manifest
		sums[m.Epoch] = sum
		t.Logf("epoch %d: dirtied %d pages, %d changed, %d new, %d scanned, %d bytes stored", m.Epoch, k, m.Pages.Changed, m.Pages.New, m.Pages.Scanned, m.Bytes.Stored)
		if m.Pages.Changed < int64(k) || m.Pages.Changed > int64(k)+margin {
			t.Errorf("epoch %d: %d pages changed after dirtying %d, want %d to %d", m.Epoch, m.Pages.Changed, k, k, k+margin)
		}
		if m.Pages.New < int64(k) || m.Pages.New > m.Pages.Changed {
			t.Errorf("epoch %d: %d new pages, want between %d and the %d changed", m.Epoch, m.Pages.New, k, m.Pages.Changed)
		}
		if maxBytes := int64(k+margin)*store.PageSize + 8*store.ChunkSize; m.Bytes.Stored > maxBytes {
			t.Errorf("epoch %d: %d bytes stored for %d dirtied pages, want at most %d", m.Epoch, m.Bytes.Stored, k, maxBytes)
		}
	}
	if got := epochNumbers(t, e, a.name); len(got) != 5 || got[4] != 5 {
		t.Fatalf("epochs %v, want 1..5", got)
	}
	if sums[5] == sums[4] || sums[4] == sums[3] {
		t.Fatalf("the buffer did not change between epochs: %v", sums)
	}
	// A clone's standby copy, filled at epoch 2 and brought to 4, is what
	// the restore of epoch 5 starts from (brought to 5 by the restore);
	// the restore of epoch 3 after it materialises the epoch.
	for _, n := range []uint64{2, 4} {
		if err := e.Standby(t.Context(), a.name, n); err != nil {
			t.Fatalf("standby at epoch %d: %v", n, err)
		}
	}
	for i, n := range []uint64{5, 3} {
		stopAndWait(t, e, a.name)
		if _, _, err := e.Restore(t.Context(), a.name, RestoreOptions{Epoch: n}); err != nil {
			t.Fatalf("restore epoch %d: %v", n, err)
		}
		if used := e.standby.used.Load(); used != 1 {
			t.Errorf("after restore %d of epoch %d: the standby was used %d time(s), want 1", i+1, n, used)
		}
		c := dial(t, a.port)
		if got := c.sum(t); got != sums[n] {
			t.Fatalf("buffer after restoring epoch %d: sha256 %s, want %s", n, got, sums[n])
		}
		if s := c.state(t); s.nonce != a.nonce {
			t.Fatalf("nonce %s after restore, want %s", s.nonce, a.nonce)
		}
	}
	stopAndWait(t, e, a.name)
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestCorruptNewestEpoch damages one stored page that only the newest epoch
// references: its restore must fail before anything is touched or started,
// and the previous epoch must still restore.
func TestCorruptNewestEpoch(t *testing.T) {
	requireE2E(t)
	state := t.TempDir()
	e := newEngine(t, state, nil)
	dataDir := t.TempDir()
	marker := filepath.Join(dataDir, "marker")
	writeFile(t, marker, "v1")
	a := startApp(t, e, "corrupt", appOpts{bufMB: 16, dataDir: dataDir})
	c := dial(t, a.port)
	sum1 := c.sum(t)
	ep1, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, marker, "v2")
	c.ask(t, "DIRTY 50 77")
	ep2, err := e.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stopAndWait(t, e, a.name)
	writeFile(t, marker, "v3")

	// A page of a pages image that epoch 1 does not reference.
	in1 := map[store.Hash]bool{}
	ep1.ForEachHash(func(h store.Hash) { in1[h] = true })
	var victim store.Hash
	found := false
	for _, f := range ep2.Images {
		if f.Kind != store.KindPages {
			continue
		}
		for _, h := range f.Hashes {
			if !in1[h] && !h.IsZeroPage() {
				victim, found = h, true
				break
			}
		}
		if found {
			break
		}
	}
	if !found {
		t.Fatal("epoch 2 has no page of its own")
	}
	flipStoredByte(t, filepath.Join(state, "store"), victim)

	_, _, err = e.Restore(t.Context(), a.name, RestoreOptions{Epoch: 2})
	if !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("restore of the damaged epoch: %v, want store.ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), "pages-") || !strings.Contains(err.Error(), "epoch 2") {
		t.Errorf("error %q should name the epoch and the damaged image", err)
	}
	t.Logf("restore of the damaged epoch: %v", err)
	if st, _ := e.App(a.name); st.Running() {
		t.Fatalf("app runs after a failed restore (pid %d)", st.Pid)
	}
	if pids := cgroupPids(t, e, a.name); len(pids) != 0 {
		t.Fatalf("processes %v in the app's cgroup after a failed restore", pids)
	}
	if got := readFile(t, marker); got != "v3" {
		t.Fatalf("data file rewritten to %q by a restore that failed, want it untouched (v3)", got)
	}

	if _, _, err := e.Restore(t.Context(), a.name, RestoreOptions{Epoch: 1}); err != nil {
		t.Fatalf("restore of the previous epoch: %v", err)
	}
	c = dial(t, a.port)
	if got := c.sum(t); got != sum1 {
		t.Fatalf("buffer after restoring epoch 1: %s, want %s", got, sum1)
	}
	if got := readFile(t, marker); got != "v1" {
		t.Fatalf("data file %q after restoring epoch 1, want v1", got)
	}
	stopAndWait(t, e, a.name)
}

// flipStoredByte flips one byte in the middle of the record of h in the
// store's packs, found through the pack indexes (layout: replicate/store
// doc.go: magic "DPLIDX01", 32-byte entries of hash, offset uint64 LE,
// length uint32 LE, encoding and padding, then an xxh3-64).
func flipStoredByte(t *testing.T, storeDir string, h store.Hash) {
	t.Helper()
	idxs, err := filepath.Glob(filepath.Join(storeDir, "packs", "*.idx"))
	if err != nil {
		t.Fatal(err)
	}
	for _, idx := range idxs {
		b, err := os.ReadFile(idx)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 16 || string(b[:8]) != "DPLIDX01" || (len(b)-16)%32 != 0 {
			t.Fatalf("%s: not an index", idx)
		}
		for e := b[8 : len(b)-8]; len(e) >= 32; e = e[32:] {
			if store.Hash(e[:16]) != h {
				continue
			}
			off := int64(binary.LittleEndian.Uint64(e[16:]))
			n := int64(binary.LittleEndian.Uint32(e[24:]))
			pack := strings.TrimSuffix(idx, ".idx") + ".pack"
			f, err := os.OpenFile(pack, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var one [1]byte
			if _, err := f.ReadAt(one[:], off+n/2); err != nil {
				t.Fatal(err)
			}
			one[0] ^= 0x5a
			if _, err := f.WriteAt(one[:], off+n/2); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("hash %s not in any pack index", h)
}

func writeFile(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExportImport moves an app between two engines with their own state
// directories through an archive: the restored app continues from the
// exported epoch's barrier, with the same nonce, and so does the TCP
// connection the test holds.
func TestExportImport(t *testing.T) {
	requireE2E(t)
	src := newEngine(t, t.TempDir(), nil)
	a := startApp(t, src, "move", appOpts{shm: true, tick: 10 * time.Millisecond, dataDir: t.TempDir()})
	held := dial(t, a.port)
	if s := held.state(t); s.nonce != a.nonce {
		t.Fatalf("nonce %s, want %s", s.nonce, a.nonce)
	}
	var atBarrier []byte
	for i := 1; i <= 2; i++ {
		waitTicks(t, a.data, 20*i)
		if _, err := src.Checkpoint(t.Context(), a.name, CheckpointOptions{
			Barrier: func(context.Context) (uint64, error) {
				b, err := os.ReadFile(a.data)
				atBarrier = b
				return 0, err
			},
		}); err != nil {
			t.Fatal(err)
		}
	}
	b := len(parseTicks(t, atBarrier))
	waitTicks(t, a.data, b+30)
	stopAndWait(t, src, a.name)
	atStop := len(readTicks(t, a.data))

	archive := filepath.Join(t.TempDir(), "app.doppel")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	var progressed int64
	h, err := src.Export(t.Context(), a.name, 0, f, func(done, total int64) { progressed = done })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if h.Epoch != 2 || h.App.Spec.Name != a.name || h.App.Pid != 0 || progressed != h.Bytes {
		t.Fatalf("archive header %+v (progress %d): want epoch 2 of %s, no pid, progress to %d", h, progressed, a.name, h.Bytes)
	}

	dst := newEngine(t, t.TempDir(), nil)
	f, err = os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, ep, err := dst.Import(t.Context(), f, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Running() || ep.Manifest.Epoch != 2 || st.LastEpoch != 2 {
		t.Fatalf("imported: running %t, epoch %d, last epoch %d; want stopped, 2, 2", st.Running(), ep.Manifest.Epoch, st.LastEpoch)
	}
	if _, _, err := dst.Import(t.Context(), mustOpen(t, archive), ImportOptions{}); !errors.Is(err, ErrAppExists) {
		t.Fatalf("second import: %v, want ErrAppExists", err)
	}
	st, ep, err = dst.Restore(t.Context(), a.name, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Manifest.Epoch != 2 || !st.Running() {
		t.Fatalf("restored epoch %d running %t", ep.Manifest.Epoch, st.Running())
	}
	if now := []byte(readFile(t, a.data)); !bytes.HasPrefix(now, atBarrier) {
		t.Fatal("data file after restore does not start with its content at the barrier")
	}
	s := held.state(t)
	// The restored app runs on from the barrier: its data file, rolled back
	// to the barrier, goes on without a gap or a repeat (checkTicks), which
	// a memory state from the stop (counter at or past atStop) would break.
	if s.nonce != a.nonce || s.counter < uint64(b) || !s.shmOK || s.shm != s.counter {
		t.Fatalf("state after restore %+v: want nonce %s, counter from the barrier (%d, it was %d at the stop), segment = counter", s, a.nonce, b, atStop)
	}
	checkTicks(t, a, waitTicks(t, a.data, int(s.counter)+20))

	// The new node checkpoints the app on from the imported epoch.
	ep3, err := dst.Checkpoint(t.Context(), a.name, CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ep3.Manifest.Epoch != 3 || ep3.Manifest.Parent != 2 {
		t.Fatalf("epoch %d parent %d on the new node, want 3, 2", ep3.Manifest.Epoch, ep3.Manifest.Parent)
	}
	stopAndWait(t, dst, a.name)
}

func mustOpen(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
