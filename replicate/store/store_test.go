package store

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"doppel/replicate/store/storetest"
)

func TestZeroPageHash(t *testing.T) {
	if got := Sum(make([]byte, PageSize)); got != ZeroPageHash() {
		t.Fatalf("ZeroPageHash() = %s, Sum(zero page) = %s", ZeroPageHash(), got)
	}
	h, err := ParseHash(ZeroPageHash().String())
	if err != nil || h != ZeroPageHash() {
		t.Fatalf("ParseHash round trip: %v %v", h, err)
	}
}

// richImage has two processes sharing some pages, zero pages, a region left
// in the parent image, a multi-chunk blob, an empty file and a symlink.
func richImage(seed uint64) *storetest.Image {
	mem1 := storetest.Memory(seed, 700)
	mem2 := storetest.Memory(seed+1, 300)
	copy(mem2[:50*PageSize], mem1[:50*PageSize]) // shared pages
	clear(mem2[100*PageSize : 110*PageSize])     // zero pages
	big := make([]byte, 3*ChunkSize+123)
	r := rand.New(rand.NewPCG(seed, 9))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	return &storetest.Image{
		Procs: []storetest.Proc{
			{PID: 10, Regions: []storetest.Region{
				{Vaddr: 0x400000, Pages: 200, Data: mem1[:200*PageSize]},
				{Vaddr: 0x600000, Pages: 16, Flags: storetest.PEParent},
				{Vaddr: 0x7f0000000000, Pages: 500, Data: mem1[200*PageSize:]},
			}},
			{PID: 11, PagesID: 99, Regions: []storetest.Region{
				{Vaddr: 0x400000, Pages: 300, Data: mem2},
				{Vaddr: 0x900000, Pages: 4, Flags: storetest.PELazy},
			}},
		},
		Files: map[string][]byte{
			"inventory.img":    []byte("inventory"),
			"core-10.img":      []byte("core ten"),
			"core-11.img":      []byte("core eleven"),
			"ghost-file-1.img": big,
			"empty.img":        {},
		},
		Links: map[string]string{"parent": "../prev"},
	}
}

func TestIngestMaterialiseByteIdentical(t *testing.T) {
	s := openStore(t, testConfig())
	src := writeImage(t, richImage(1))
	ep := ingest(t, s, "app", 1, 0, src)
	sameDir(t, src, materialise(t, s, "app", 1))

	m := ep.Manifest
	if m.App != "app" || m.Epoch != 1 || m.Term != 1 || m.Barrier != 42 {
		t.Fatalf("manifest identity: %+v", m)
	}
	if m.Pages.Scanned != 1000 {
		t.Errorf("Scanned = %d, want 1000", m.Pages.Scanned)
	}
	if m.Pages.Changed != 1000 {
		t.Errorf("Changed = %d, want 1000 (no parent)", m.Pages.Changed)
	}
	if m.Pages.Skipped[SkipInParent] != 16 || m.Pages.Skipped[SkipLazy] != 4 {
		t.Errorf("Skipped = %v, want 16 in-parent and 4 lazy", m.Pages.Skipped)
	}
	shared := int64(0)
	mem1 := storetest.Memory(1, 50)
	for p := 0; p < 50; p++ {
		if !isZero(mem1[p*PageSize : (p+1)*PageSize]) {
			shared++
		}
	}
	if m.Pages.Skipped[SkipDuplicate] < shared {
		t.Errorf("Skipped duplicate = %d, want >= %d (shared pages)", m.Pages.Skipped[SkipDuplicate], shared)
	}
	if m.Pages.Zero < 10 || m.Pages.Zero != m.Pages.Skipped[SkipZero] {
		t.Errorf("Zero = %d, skipped zero %d", m.Pages.Zero, m.Pages.Skipped[SkipZero])
	}
	if got := m.Pages.New + m.Pages.Zero + m.Pages.Skipped[SkipDuplicate]; got != m.Pages.Scanned {
		t.Errorf("new+zero+duplicate = %d, scanned %d", got, m.Pages.Scanned)
	}
	if m.Images.Files != 10 || m.Images.Changed != 10 {
		t.Errorf("Images = %+v", m.Images)
	}
	if m.Bytes.Stored >= m.Bytes.Raw || m.Bytes.Stored < m.Pages.New*PageSize {
		t.Errorf("Bytes = %+v, new pages %d", m.Bytes, m.Pages.New)
	}

	// The stored description round-trips and matches.
	loaded, err := s.Load("app", 1)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Manifest.Pages.New != m.Pages.New || len(loaded.Images) != len(ep.Images) {
		t.Fatalf("Load differs from Commit result")
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), dirApps, "app", epochDirName(1), fileManifest)); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
}

func TestIncrementalCountsChangedPages(t *testing.T) {
	s := openStore(t, testConfig())
	mem := storetest.Memory(7, 4096)
	im := storetest.SimpleImage(mem)
	src1 := writeImage(t, im)
	ep1 := ingest(t, s, "app", 1, 0, src1)

	dirty := storetest.Dirty(mem, 0.01, 8)
	im.Files["core-1.img"] = []byte("registers changed")
	src2 := writeImage(t, im)
	ep2 := ingest(t, s, "app", 2, 1, src2)
	sameDir(t, src1, materialise(t, s, "app", 1))
	sameDir(t, src2, materialise(t, s, "app", 2))

	p := ep2.Manifest.Pages
	if p.Changed != int64(len(dirty)) || p.New != int64(len(dirty)) {
		t.Errorf("Changed %d New %d, want %d dirtied", p.Changed, p.New, len(dirty))
	}
	if want := ep1.Manifest.Pages.Scanned - ep1.Manifest.Pages.Zero - int64(len(dirty)); p.Skipped[SkipUnchanged] < want-int64(len(dirty)) {
		t.Errorf("unchanged = %d, want about %d", p.Skipped[SkipUnchanged], want)
	}
	if ep2.Manifest.Images.Changed != 2 { // core-1.img and pages-1.img
		t.Errorf("Images.Changed = %d, want 2", ep2.Manifest.Images.Changed)
	}
	if max := int64(len(dirty))*PageSize + 4096; ep2.Manifest.Bytes.Stored > max {
		t.Errorf("incremental stored %d bytes, want <= %d", ep2.Manifest.Bytes.Stored, max)
	}
}

func TestMovedPagesAreDuplicatesNotNew(t *testing.T) {
	s := openStore(t, testConfig())
	mem := storetest.Memory(3, 1024)
	im := storetest.SimpleImage(mem)
	ingest(t, s, "app", 1, 0, writeImage(t, im))
	// Same content at other addresses: changed, but nothing new to store.
	for i := range im.Procs[0].Regions {
		im.Procs[0].Regions[i].Vaddr += 1 << 30
	}
	src := writeImage(t, im)
	ep := ingest(t, s, "app", 2, 1, src)
	if ep.Manifest.Pages.New != 0 || ep.Manifest.Pages.Changed != ep.Manifest.Pages.Scanned {
		t.Fatalf("pages = %+v", ep.Manifest.Pages)
	}
	sameDir(t, src, materialise(t, s, "app", 2))
}

func TestDedupAcrossApps(t *testing.T) {
	s := openStore(t, testConfig())
	src := writeImage(t, storetest.SimpleImage(storetest.Memory(5, 512)))
	ingest(t, s, "a", 1, 0, src)
	ep := ingest(t, s, "b", 1, 0, src)
	if ep.Manifest.Pages.New != 0 || ep.Manifest.Bytes.Stored != 0 {
		t.Fatalf("second app stored again: %+v %+v", ep.Manifest.Pages, ep.Manifest.Bytes)
	}
	sameDir(t, src, materialise(t, s, "b", 1))
}

func TestPutGetHas(t *testing.T) {
	s := openStore(t, testConfig())
	tx, err := s.Begin("app", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	data := []byte("hello block")
	h := Sum(data)
	if err := tx.Put(h, []byte("other")); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Put with wrong hash: %v", err)
	}
	if err := tx.Put(h, data); err != nil {
		t.Fatal(err)
	}
	if !tx.Has(h) || s.Has(h) {
		t.Fatalf("before commit: txn has %v, store has %v", tx.Has(h), s.Has(h))
	}
	if got, err := tx.Get(h); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("txn Get = %q, %v", got, err)
	}
	tx.SetData(&DataSet{Roots: []string{"/d"}, Files: []DataFile{{Path: "/d", Mode: os.ModeDir | 0o755}, {Path: "/d/f", Mode: 0o644, Size: int64(len(data)), Blocks: []Hash{h}}}})
	if _, err := tx.Commit(Manifest{}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(h); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("store Get = %q, %v", got, err)
	}
	if got, err := s.Get(ZeroPageHash()); err != nil || !bytes.Equal(got, make([]byte, PageSize)) {
		t.Fatalf("Get(zero) = %v", err)
	}
	if _, err := s.Get(Sum([]byte("absent"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(absent) = %v", err)
	}
	ep, err := s.Load("app", 1)
	if err != nil || ep.Data == nil || ep.Data.Files[1].Blocks[0] != h {
		t.Fatalf("Load data set: %v %+v", err, ep)
	}
}

func TestCommitRejectsIncompleteEpoch(t *testing.T) {
	s := openStore(t, testConfig())
	tx, err := s.Begin("app", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	tx.SetImages([]ImageFile{{Name: "core-1.img", Kind: KindBlob, Size: 5, Hashes: []Hash{Sum([]byte("never"))}}})
	if _, err := tx.Commit(Manifest{}); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("Commit = %v, want ErrIncomplete", err)
	}
	tx.Abort()
	if ns, _ := s.Epochs("app"); len(ns) != 0 {
		t.Fatalf("epochs after failed commit: %v", ns)
	}
}

func TestCommitTwiceFails(t *testing.T) {
	s := openStore(t, testConfig())
	src := writeImage(t, storetest.SimpleImage(storetest.Memory(1, 8)))
	ingest(t, s, "app", 1, 0, src)
	if _, err := s.Begin("app", 1, 0); !errors.Is(err, ErrEpochExists) {
		t.Fatalf("Begin existing epoch: %v", err)
	}
	if _, err := s.Begin("../x", 1, 0); !errors.Is(err, ErrBadName) {
		t.Fatalf("Begin bad app: %v", err)
	}
	if _, err := s.Begin("app", 3, 3); err == nil {
		t.Fatal("Begin with parent == epoch succeeded")
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	s := openStore(t, testConfig())
	src := writeImage(t, storetest.SimpleImage(storetest.Memory(2, 2048)))
	tx, err := s.Begin("app", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.AddImageDir(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if len(packFiles(t, s)) == 0 {
		t.Fatal("ingest wrote no pack")
	}
	tx.Abort()
	tx.Abort() // idempotent
	if got := packFiles(t, s); len(got) != 0 {
		t.Fatalf("packs after abort: %v", got)
	}
	if _, err := tx.Commit(Manifest{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Commit after Abort: %v", err)
	}
	if ns, _ := s.Epochs("app"); len(ns) != 0 {
		t.Fatalf("epochs: %v", ns)
	}
}

func TestBadImageRejected(t *testing.T) {
	s := openStore(t, testConfig())
	mem := storetest.Memory(1, 16)
	cases := map[string]func(dir string){
		"pagemap lists more pages than the pages file": func(dir string) {
			im := storetest.SimpleImage(mem)
			im.Procs[0].Regions[0].Data = mem[:8*PageSize]
			im.Procs[0].Regions[0].Pages = 8
			_ = im.Write(dir)
			_ = os.WriteFile(filepath.Join(dir, "pages-1.img"), mem[:4*PageSize], 0o600)
		},
		"garbage pagemap": func(dir string) {
			_ = storetest.SimpleImage(mem).Write(dir)
			_ = os.WriteFile(filepath.Join(dir, "pagemap-1.img"), []byte("not a pagemap"), 0o600)
		},
		"subdirectory": func(dir string) {
			_ = storetest.SimpleImage(mem).Write(dir)
			_ = os.Mkdir(filepath.Join(dir, "sub"), 0o700)
		},
		"pagemap without pages file": func(dir string) {
			_ = storetest.SimpleImage(mem).Write(dir)
			_ = os.Remove(filepath.Join(dir, "pages-1.img"))
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			mk(dir)
			tx, err := s.Begin("app", 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Abort()
			if err := tx.AddImageDir(context.Background(), dir); !errors.Is(err, ErrBadImage) {
				t.Fatalf("AddImageDir = %v, want ErrBadImage", err)
			}
		})
	}
}

func TestReopenRemovesLeftoversKeepsEpochs(t *testing.T) {
	root := filepath.Join(t.TempDir(), "store")
	s, err := Open(root, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	src := writeImage(t, richImage(4))
	ingest(t, s, "app", 1, 0, src)
	if _, err := Open(root, testConfig()); err == nil {
		t.Fatal("second Open of a locked store succeeded")
	}
	// What an interrupted transaction leaves behind.
	tx, err := s.Begin("app", 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.AddImageDir(context.Background(), writeImage(t, richImage(5))); err != nil {
		t.Fatal(err)
	}
	for _, w := range tx.writers {
		_ = w.flush()
	}
	garbage := []string{
		filepath.Join(root, dirApps, "app", prefixTmp+epochDirName(2)+"-x"),
		filepath.Join(root, dirApps, "app", prefixTrash+epochDirName(7)),
	}
	for _, g := range garbage {
		if err := os.MkdirAll(g, 0o700); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(g, fileEpoch), []byte("partial"), 0o600)
	}
	orphanPack := filepath.Join(root, dirPacks, "00000000deadbeef"+packExt)
	_ = os.WriteFile(orphanPack, []byte("pack without index"), 0o600)
	// Simulate the crash: the process is gone; release its lock and files
	// without aborting.
	for _, w := range tx.writers {
		_ = w.f.Close()
	}
	s.gcMu.RUnlock()
	s.closeFiles()

	s2, err := Open(root, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, name := range packFiles(t, s2) {
		if strings.HasSuffix(name, tmpExt) || name == filepath.Base(orphanPack) {
			t.Errorf("leftover %s survived Open", name)
		}
	}
	for _, g := range garbage {
		if _, err := os.Stat(g); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s survived Open", g)
		}
	}
	if ns, _ := s2.Epochs("app"); len(ns) != 1 || ns[0] != 1 {
		t.Fatalf("epochs after reopen: %v", ns)
	}
	sameDir(t, src, materialise(t, s2, "app", 1))
}

func TestGCRetentionAndCompaction(t *testing.T) {
	cfg := testConfig()
	cfg.Retention = 2
	cfg.CompactBelow = 0.9
	s := openStore(t, cfg)
	mem := storetest.Memory(11, 2048)
	im := storetest.SimpleImage(mem)
	var srcs []string
	for n := uint64(1); n <= 5; n++ {
		if n > 1 {
			storetest.Dirty(mem, 0.3, n)
		}
		srcs = append(srcs, writeImage(t, im))
		ingest(t, s, "app", n, n-1, srcs[n-1])
	}
	// Pin epoch 2: GC must keep it although it is beyond retention.
	_, release, err := s.Pin("app", 2)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ns, _ := s.Epochs("app"); len(ns) != 3 || ns[0] != 2 || ns[1] != 4 || ns[2] != 5 {
		t.Fatalf("epochs after GC with epoch 2 pinned: %v", ns)
	}
	release()
	st2, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ns, _ := s.Epochs("app"); len(ns) != 2 || ns[0] != 4 {
		t.Fatalf("epochs after GC: %v", ns)
	}
	if st.EpochsDeleted+st2.EpochsDeleted != 3 || st.BytesReclaimed+st2.BytesReclaimed == 0 || st2.PacksCompacted+st2.PacksDeleted == 0 {
		t.Fatalf("GC stats %+v then %+v", st, st2)
	}
	sameDir(t, srcs[3], materialise(t, s, "app", 4))
	sameDir(t, srcs[4], materialise(t, s, "app", 5))

	// Every pack byte left is live after compaction at 90%.
	var total int64
	for _, name := range packFiles(t, s) {
		if strings.HasSuffix(name, packExt) {
			fi, _ := os.Stat(filepath.Join(s.Dir(), dirPacks, name))
			total += fi.Size()
		}
	}
	if total != st2.LiveBytes && float64(st2.LiveBytes)/float64(total) < cfg.CompactBelow {
		t.Fatalf("pack bytes %d, live %d", total, st2.LiveBytes)
	}

	// Reopen: the compacted packs load and serve the epochs.
	root := s.Dir()
	_ = s.Close()
	s2, err := Open(root, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	sameDir(t, srcs[4], materialise(t, s2, "app", 5))
}

func TestConcurrentIngestReadGC(t *testing.T) {
	s := openStore(t, testConfig())
	srcs := map[string]string{}
	for i, app := range []string{"a", "b", "c"} {
		srcs[app] = writeImage(t, storetest.SimpleImage(storetest.Memory(uint64(i), 1024)))
		ingest(t, s, app, 1, 0, srcs[app])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for _, app := range []string{"a", "b", "c"} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for n := uint64(2); n <= 4; n++ {
				tx, err := s.Begin(app, n, n-1)
				if err != nil {
					errs <- err
					return
				}
				if err := tx.AddImageDir(context.Background(), srcs[app]); err != nil {
					tx.Abort()
					errs <- err
					return
				}
				if _, err := tx.Commit(Manifest{}); err != nil {
					errs <- err
				}
				tx.Abort()
			}
		}()
		go func() {
			defer wg.Done()
			for range 3 {
				n, err := s.Latest(app)
				if err != nil {
					errs <- err
					return
				}
				dir := filepath.Join(t.TempDir(), "m")
				err = s.Materialise(context.Background(), app, n, dir)
				if err != nil && !errors.Is(err, ErrNoEpoch) { // GC may delete it first
					errs <- err
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 3 {
			if _, err := s.GC(context.Background()); err != nil {
				errs <- err
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for app, src := range srcs {
		n, err := s.Latest(app)
		if err != nil || n != 4 {
			t.Fatalf("%s latest = %d, %v", app, n, err)
		}
		sameDir(t, src, materialise(t, s, app, n))
	}
}

func TestFetch(t *testing.T) {
	s := openStore(t, testConfig())
	src := writeImage(t, richImage(6))
	ep := ingest(t, s, "app", 1, 0, src)
	var hs []Hash
	ep.ForEachHash(func(h Hash) { hs = append(hs, h) })
	n := 0
	err := s.Fetch(hs, func(i int, data []byte) error {
		if i != n {
			t.Fatalf("Fetch order: got %d want %d", i, n)
		}
		n++
		if Sum(data) != hs[i] {
			t.Fatalf("Fetch %d: wrong content", i)
		}
		return nil
	})
	if err != nil || n != len(hs) {
		t.Fatalf("Fetch: %v after %d of %d", err, n, len(hs))
	}
	if got := s.Missing(append(hs, Sum([]byte("x")))); len(got) != 1 {
		t.Fatalf("Missing = %v", got)
	}
}

// TestPinAndDeletionExclude: an epoch being deleted cannot be pinned, and
// a pinned one is not deleted; a deletion of several deletes none of them
// when one is pinned.
func TestPinAndDeletionExclude(t *testing.T) {
	s := openStore(t, testConfig())
	mem := storetest.Memory(12, 256)
	im := storetest.SimpleImage(mem)
	ingest(t, s, "app", 1, 0, writeImage(t, im))
	storetest.Dirty(mem, 0.3, 2)
	ingest(t, s, "app", 2, 1, writeImage(t, im))

	// A deletion under way, its directory not renamed yet: Pin refuses.
	if err := s.doom("app", []uint64{1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Pin("app", 1); !errors.Is(err, ErrNoEpoch) {
		t.Fatalf("pin of an epoch being deleted = %v, want ErrNoEpoch", err)
	}
	s.undoom("app", []uint64{1})

	_, release, err := s.Pin("app", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.doom("app", []uint64{2, 1}); err == nil {
		t.Fatal("doom of a pinned epoch succeeded")
	}
	if _, _, err := s.Pin("app", 2); err != nil {
		t.Fatalf("a failed deletion left epoch 2 unpinnable: %v", err)
	}
	if n, err := s.Discard("app", []uint64{2, 1}); err == nil || n != 0 {
		t.Fatalf("discard with epoch 1 pinned = %d, %v; want 0 and an error", n, err)
	}
	if err := s.Forget(context.Background(), "app"); err == nil {
		t.Fatal("forget with epoch 1 pinned succeeded")
	}
	if ns, _ := s.Epochs("app"); !slices.Equal(ns, []uint64{1, 2}) {
		t.Fatalf("epochs %v, want [1 2]", ns)
	}
	release()
	if n, err := s.Discard("app", []uint64{1}); err != nil || n != 1 {
		t.Fatalf("discard after release = %d, %v", n, err)
	}
	if _, _, err := s.Pin("app", 1); !errors.Is(err, ErrNoEpoch) {
		t.Fatalf("pin of a deleted epoch = %v, want ErrNoEpoch", err)
	}
}
