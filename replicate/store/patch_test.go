package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"doppel/replicate/store/storetest"
)

// TestUpdateImageFollowsEpochs keeps one directory up to date across a
// chain of epochs with UpdateImage and checks it against a fresh
// materialisation of each epoch: changed pages, pages that become zero,
// a pages image that grows and shrinks, a file that changes, one that
// appears and one that goes.
func TestUpdateImageFollowsEpochs(t *testing.T) {
	s := openStore(t, testConfig())
	mem := storetest.Memory(7, 400)
	image := func(step int) *storetest.Image {
		m := append([]byte(nil), mem...)
		pages := 300
		switch step {
		case 2:
			for p := 0; p < 300; p += 37 { // scattered changes
				m[p*PageSize+5] ^= 0xff
			}
			clear(m[20*PageSize : 30*PageSize]) // pages that become zero
		case 3:
			pages = 400 // grows
			copy(m[100*PageSize:], storetest.Memory(8, 50))
		case 4:
			pages = 120 // shrinks
		}
		files := map[string][]byte{"inventory.img": []byte("inventory"), "core-10.img": []byte("core ten")}
		if step >= 3 {
			files["core-10.img"] = []byte("core ten, later")
			files["fdinfo-2.img"] = []byte("new file")
		}
		if step == 4 {
			delete(files, "inventory.img")
		}
		return &storetest.Image{
			Procs: []storetest.Proc{{PID: 10, Regions: []storetest.Region{
				{Vaddr: 0x400000, Pages: pages, Data: m[:pages*PageSize]},
			}}},
			Files: files,
			Links: map[string]string{"parent": "../prev"},
		}
	}
	dir := filepath.Join(t.TempDir(), "standby")
	var prev map[string]ImageFile
	for step := 1; step <= 4; step++ {
		ep := ingest(t, s, "app", uint64(step), uint64(step-1), writeImage(t, image(step)))
		if step == 1 {
			if err := s.Materialise(context.Background(), "app", 1, dir); err != nil {
				t.Fatal(err)
			}
		} else {
			keep := map[string]bool{}
			for i := range ep.Images {
				f := &ep.Images[i]
				keep[f.Name] = true
				var old *ImageFile
				if o, ok := prev[f.Name]; ok {
					old = &o
				}
				if err := s.UpdateImage(dir, old, f); err != nil {
					t.Fatalf("epoch %d: UpdateImage %s: %v", step, f.Name, err)
				}
			}
			for name := range prev {
				if !keep[name] {
					if err := os.Remove(filepath.Join(dir, name)); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		sameDir(t, materialise(t, s, "app", uint64(step)), dir)
		prev = map[string]ImageFile{}
		for _, f := range ep.Images {
			prev[f.Name] = f
		}
	}
}

// TestUpdateImageChecksWhatItWrites: a page damaged in its pack is found
// when UpdateImage copies it, not later by the restore.
func TestUpdateImageChecksWhatItWrites(t *testing.T) {
	s := openStore(t, testConfig())
	mem := storetest.Memory(3, 64)
	image := func(m []byte) *storetest.Image {
		return &storetest.Image{Procs: []storetest.Proc{{PID: 10, Regions: []storetest.Region{
			{Vaddr: 0x400000, Pages: 64, Data: m},
		}}}, Files: map[string][]byte{"inventory.img": []byte("inventory")}}
	}
	ep1 := ingest(t, s, "app", 1, 0, writeImage(t, image(mem)))
	dir := filepath.Join(t.TempDir(), "standby")
	if err := s.Materialise(context.Background(), "app", 1, dir); err != nil {
		t.Fatal(err)
	}
	m2 := append([]byte(nil), mem...)
	m2[5*PageSize] ^= 1
	ep2 := ingest(t, s, "app", 2, 1, writeImage(t, image(m2)))
	var f1, f2 *ImageFile
	for i := range ep2.Images {
		if ep2.Images[i].Kind == KindPages {
			f2 = &ep2.Images[i]
			f1 = &ep1.Images[i]
		}
	}
	if f1 == nil || f1.Name != f2.Name {
		t.Fatal("no pages image in both epochs")
	}
	// Damage the changed page where the pack holds it.
	h := f2.Hashes[5]
	s.mu.RLock()
	l := s.idx[h]
	s.mu.RUnlock()
	w, err := os.OpenFile(l.p.f.Name(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte{0xAA}, l.off+7); err != nil {
		t.Fatal(err)
	}
	w.Close()
	err = s.UpdateImage(dir, f1, f2)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("UpdateImage over a damaged page: %v, want ErrCorrupt", err)
	}
}

// TestPatchAlignsShiftedPages turns files of pages into others made from
// them by edits a dump sees between epochs (pages that appear or go, which
// shift the rest; changed pages; zero pages; repeated content) with
// alignPages and applyRuns, and checks the result byte for byte and that
// only pages found nowhere in the old file were fetched.
func TestPatchAlignsShiftedPages(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	page := func(id int) []byte {
		b := make([]byte, PageSize)
		if id == 0 {
			return b // a zero page
		}
		for i := range b {
			b[i] = byte(id*31 + i*7 + i>>8)
		}
		b[0], b[1] = byte(id), byte(id>>8) // unique content per id
		return b
	}
	next := 1000
	fresh := func() int { next++; return next }
	cases := map[string]func([]int) []int{
		"two pages appear near the start": func(o []int) []int {
			return slices.Concat(o[:3], []int{fresh(), fresh()}, o[3:])
		},
		"pages go near the start, one appears near the end": func(o []int) []int {
			n := slices.Concat(o[:2], o[7:])
			return slices.Insert(n, len(n)-4, fresh())
		},
		"scattered changes and zero pages": func(o []int) []int {
			n := slices.Clone(o)
			for i := 5; i < len(n); i += 17 {
				n[i] = fresh()
			}
			n[40], n[41] = 0, 0
			return n
		},
		"repeated content shifted": func(o []int) []int {
			return slices.Concat([]int{fresh()}, o)
		},
		"everything new": func(o []int) []int {
			n := make([]int, len(o)/2)
			for i := range n {
				n[i] = fresh()
			}
			return n
		},
	}
	edits := 0 // of the case running: each may cost a few pages fetched
	for seed := range 20 {
		cases[fmt.Sprintf("random edits %d", seed)] = func(o []int) []int {
			n := slices.Clone(o)
			edits = 4 + seed
			for e := 0; e < edits; e++ {
				at := rng.IntN(len(n))
				switch rng.IntN(4) {
				case 0:
					n = slices.Insert(n, at, fresh())
				case 1:
					n = slices.Delete(n, at, min(len(n), at+1+rng.IntN(5)))
				case 2:
					n[at] = fresh()
				default:
					n[at] = n[rng.IntN(len(n))] // content that exists elsewhere
				}
			}
			return n
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cases)) {
		edit := cases[name]
		edits = 0
		t.Run(name, func(t *testing.T) {
			old := make([]int, 300)
			for i := range old {
				old[i] = 1 + i
				if name == "repeated content shifted" {
					old[i] = 1 + i%3
				}
			}
			old[100] = 0
			nw := edit(old)
			hashes := func(ids []int) []Hash {
				hs := make([]Hash, len(ids))
				for i, id := range ids {
					hs[i] = Sum(page(id))
				}
				return hs
			}
			content := func(ids []int) []byte {
				var b []byte
				for _, id := range ids {
					b = append(b, page(id)...)
				}
				return b
			}
			path := filepath.Join(t.TempDir(), "pages-1.img")
			if err := os.WriteFile(path, content(old), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			inOld := map[Hash]bool{}
			for _, h := range hashes(old) {
				inOld[h] = true
			}
			fetched, needed := 0, 0
			for _, h := range hashes(nw) {
				if !inOld[h] && !h.IsZeroPage() {
					needed++
				}
			}
			runs := alignPages(hashes(old), hashes(nw))
			err = applyRuns(f, runs, func(r pageRun) error {
				for i := r.dst; i < r.dst+r.n; i++ {
					if nw[i] != 0 {
						fetched++
					}
					if _, err := f.WriteAt(page(nw[i]), int64(i)*PageSize); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(int64(len(nw)) * PageSize); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, content(nw)) {
				t.Fatalf("content differs after the patch (%d runs)", len(runs))
			}
			// Pages the old file has are moved, not fetched; a few may be
			// fetched where edits close together hide a shift.
			if fetched > needed+edits*alignConfirm {
				t.Errorf("fetched %d pages from the store, %d are new", fetched, needed)
			}
			t.Logf("%d pages, %d new, %d fetched, %d runs", len(nw), needed, fetched, len(runs))
		})
	}
}
