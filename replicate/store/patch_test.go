package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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
