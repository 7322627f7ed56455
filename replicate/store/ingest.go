package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// AddImageDir ingests a CRIU image directory into the transaction: every
// pages-N.img is split into PageSize pages, hashed in parallel (Config.Workers),
// and the pages the store does not hold are copied into the transaction's
// packs; every other regular file is stored whole as ChunkSize chunks; a
// symbolic link is recorded with its target. The epoch's image files are
// set from the directory, and the page and image counts Commit writes into
// the manifest are computed against the parent epoch when the store has it:
// a page is "changed" when its content at its (pagemap, virtual address)
// differs from the parent's. The directory is only read.
//
// It fails with ErrBadImage for a directory that is not a flat CRIU image
// directory or whose pagemaps do not match their pages files.
func (t *Txn) AddImageDir(ctx context.Context, dir string) error {
	if err := t.usable(); err != nil {
		return err
	}
	start := time.Now()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("ingest %s: %w", dir, err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })

	// Pagemaps first: they tell which virtual page each page of a pages file is.
	pagemaps := make(map[uint32]*pagemapFile)
	for _, e := range ents {
		key, ok := pagemapKey(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("ingest %s: %w", dir, err)
		}
		pf, err := decodePagemap(key, b)
		if err != nil {
			return fmt.Errorf("ingest %s: %w", dir, err)
		}
		pagemaps[pf.pagesID] = pf
	}
	parent := t.parentView()

	c := ingestCounts{pages: PageCounts{Skipped: map[string]int64{}}}
	images := make([]ImageFile, 0, len(ents))
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		path := filepath.Join(dir, e.Name())
		info, err := os.Lstat(path)
		if err != nil {
			return fmt.Errorf("ingest %s: %w", dir, err)
		}
		f := ImageFile{Name: e.Name(), Mode: info.Mode().Perm(), Size: info.Size()}
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			f.Kind, f.Size = KindSymlink, 0
			if f.Target, err = os.Readlink(path); err != nil {
				return fmt.Errorf("ingest %s: %w", dir, err)
			}
		case info.Mode().IsRegular():
			c.bytes.Raw += info.Size()
			if id, ok := pagesID(e.Name()); ok {
				f.Kind = KindPages
				c.bytes.Pages += info.Size()
				f.Hashes, err = t.ingestPages(ctx, path, info.Size(), pagemaps[id], parent, &c.pages)
			} else {
				f.Kind = KindBlob
				f.Hashes, err = t.ingestBlob(path, info.Size())
			}
			if err != nil {
				return fmt.Errorf("ingest %s: %w", dir, err)
			}
		default:
			return fmt.Errorf("ingest %s: %w: %s is a %v", dir, ErrBadImage, e.Name(), info.Mode().Type())
		}
		images = append(images, f)
	}
	for id, pf := range pagemaps {
		// Pages of entries without data in this image.
		for _, e := range pf.entries {
			switch {
			case e.flags&pePRESENT != 0:
			case e.flags&pePARENT != 0:
				c.pages.Skipped[SkipInParent] += int64(e.pages)
			case e.flags&peLAZY != 0:
				c.pages.Skipped[SkipLazy] += int64(e.pages)
			}
		}
		if pf.presentPages() > 0 && !hasImage(images, fmt.Sprintf("pages-%d.img", id)) {
			return fmt.Errorf("ingest %s: %w: pagemap-%s.img refers to missing pages-%d.img", dir, ErrBadImage, pf.key, id)
		}
	}
	c.images = compareImages(images, parent.images)
	for k, v := range c.pages.Skipped {
		if v == 0 {
			delete(c.pages.Skipped, k)
		}
	}
	c.dur = time.Since(start)
	t.images = images
	t.ingest = c
	t.ingested = true
	return nil
}

func hasImage(images []ImageFile, name string) bool {
	for i := range images {
		if images[i].Name == name {
			return true
		}
	}
	return false
}

// view is what ingest compares against: the parent epoch's image files and
// the content of each of its virtual pages.
type view struct {
	images []ImageFile
	pages  map[string]map[uint64]Hash // pagemap key -> vaddr -> hash
}

// parentView builds the view of the parent epoch, or an empty one when there
// is no parent or the store no longer has it (every page then counts as
// changed).
func (t *Txn) parentView() view {
	v := view{pages: map[string]map[uint64]Hash{}}
	if t.parent == 0 {
		return v
	}
	ep, err := t.s.Load(t.app, t.parent)
	if err != nil {
		t.s.cfg.Logger.Warn("ingest without parent view", "app", t.app, "epoch", t.epoch, "err", err)
		return v
	}
	v.images = ep.Images
	byName := make(map[string]*ImageFile, len(ep.Images))
	for i := range ep.Images {
		byName[ep.Images[i].Name] = &ep.Images[i]
	}
	for i := range ep.Images {
		key, ok := pagemapKey(ep.Images[i].Name)
		if !ok || ep.Images[i].Kind != KindBlob {
			continue
		}
		b := make([]byte, 0, ep.Images[i].Size)
		err := t.s.Fetch(ep.Images[i].Hashes, func(_ int, d []byte) error { b = append(b, d...); return nil })
		if err != nil {
			continue
		}
		pf, err := decodePagemap(key, b)
		if err != nil {
			continue
		}
		pages := byName[fmt.Sprintf("pages-%d.img", pf.pagesID)]
		if pages == nil || uint64(len(pages.Hashes)) != pf.presentPages() {
			continue
		}
		m := make(map[uint64]Hash, len(pages.Hashes))
		pf.forEachPresent(func(i int, va uint64) { m[va] = pages.Hashes[i] })
		v.pages[key] = m
	}
	return v
}

// compareImages counts image files that are new or changed against the
// parent's, and the parent's files that are gone.
func compareImages(cur, parent []ImageFile) ImageCounts {
	c := ImageCounts{Files: int64(len(cur))}
	old := make(map[string]*ImageFile, len(parent))
	for i := range parent {
		old[parent[i].Name] = &parent[i]
	}
	for i := range cur {
		p := old[cur[i].Name]
		if p == nil || !sameImage(p, &cur[i]) {
			c.Changed++
		}
		delete(old, cur[i].Name)
	}
	c.Removed = int64(len(old))
	return c
}

func sameImage(a, b *ImageFile) bool {
	if a.Kind != b.Kind || a.Size != b.Size || a.Mode != b.Mode || a.Target != b.Target || len(a.Hashes) != len(b.Hashes) {
		return false
	}
	for i := range a.Hashes {
		if a.Hashes[i] != b.Hashes[i] {
			return false
		}
	}
	return true
}

// ingestBlob stores a whole file as ChunkSize chunks.
func (t *Txn) ingestBlob(path string, size int64) ([]Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hs := make([]Hash, 0, chunks(size, ChunkSize))
	buf := make([]byte, min(size, ChunkSize))
	for off := int64(0); off < size; off += ChunkSize {
		b := buf[:min(size-off, ChunkSize)]
		if _, err := f.ReadAt(b, off); err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Base(path), err)
		}
		h := Sum(b)
		if !t.Has(h) {
			if err := t.put(h, b); err != nil {
				return nil, err
			}
		}
		hs = append(hs, h)
	}
	return hs, nil
}

const hashBatch = 256 // pages read and hashed per work item (1 MiB)

// hashedBatch is one work item of ingestPages: a run of pages read from the
// pages file and their hashes.
type hashedBatch struct {
	buf []byte
	err error
}

// ingestPages reads and hashes a pages file in parallel batches
// (Config.Workers) and, in file order, classifies each page against the
// parent view and the store and appends the new ones to the pack.
func (t *Txn) ingestPages(ctx context.Context, path string, size int64, pm *pagemapFile, parent view, pc *PageCounts) ([]Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := chunks(size, PageSize)
	hs := make([]Hash, n)

	// Which virtual page each page is, for change counting.
	var vaddrs []uint64
	var old map[uint64]Hash
	if pm != nil {
		if pm.presentPages() != uint64(n) {
			return nil, fmt.Errorf("%w: pagemap-%s.img lists %d present pages, %s holds %d", ErrBadImage, pm.key, pm.presentPages(), filepath.Base(path), n)
		}
		vaddrs = make([]uint64, n)
		pm.forEachPresent(func(i int, va uint64) { vaddrs[i] = va })
		old = parent.pages[pm.key]
	}

	// Workers read and hash batches; this goroutine consumes them in order.
	batches := int((n + hashBatch - 1) / hashBatch)
	workers := t.s.cfg.Workers
	results := make([]chan hashedBatch, batches)
	for i := range results {
		results[i] = make(chan hashedBatch, 1)
	}
	free := make(chan []byte, workers+2) // bounds memory: batches in flight
	for range cap(free) {
		free <- make([]byte, hashBatch*PageSize)
	}
	stop := make(chan struct{})
	var next atomic.Int64
	zero := ZeroPageHash()
	var wg sync.WaitGroup
	// On an early return the workers must be told to stop before they are
	// waited for.
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				// A buffer first, then the next batch: the oldest batch
				// not yet hashed always holds a buffer, so the consumer,
				// which frees buffers in batch order, never waits on a
				// batch that cannot get one.
				var buf []byte
				select {
				case buf = <-free:
				case <-stop:
					return
				}
				b := int(next.Add(1) - 1)
				if b >= batches {
					free <- buf
					return
				}
				off := int64(b) * hashBatch * PageSize
				buf = buf[:min(size-off, hashBatch*PageSize)]
				res := hashedBatch{buf: buf}
				if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
					res.err = fmt.Errorf("read %s: %w", filepath.Base(path), err)
				}
				for p := 0; res.err == nil && p*PageSize < len(buf); p++ {
					page := buf[p*PageSize : min((p+1)*PageSize, len(buf))]
					h := Sum(page)
					if h == zero && !isZero(page) {
						res.err = fmt.Errorf("%w: page at offset %d collides with the zero page hash", ErrCorrupt, off+int64(p)*PageSize)
					}
					hs[b*hashBatch+p] = h
				}
				results[b] <- res
			}
		}()
	}

	var w *packWriter
	for b := 0; b < batches; b++ {
		var res hashedBatch
		select {
		case res = <-results[b]:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if res.err != nil {
			return nil, res.err
		}
		for p := 0; p*PageSize < len(res.buf); p++ {
			i := b*hashBatch + p
			h := hs[i]
			pc.Scanned++
			changed := true
			if vaddrs != nil && old != nil {
				if ph, ok := old[vaddrs[i]]; ok && ph == h {
					changed = false
				}
			}
			if changed {
				pc.Changed++
			}
			switch {
			case h == zero:
				pc.Zero++
				pc.Skipped[SkipZero]++
				continue
			case !changed:
				pc.Skipped[SkipUnchanged]++
				continue
			case t.Has(h):
				pc.Skipped[SkipDuplicate]++
				continue
			}
			page := res.buf[p*PageSize : min((p+1)*PageSize, len(res.buf))]
			if w, err = t.writer(int64(len(page))); err != nil {
				return nil, err
			}
			off, err := w.append(h, page)
			if err != nil {
				return nil, t.fail(err)
			}
			t.pending[h] = pendingLoc{w: w, off: off, n: uint32(len(page))}
			t.stored += int64(len(page))
			pc.New++
		}
		free <- res.buf[:cap(res.buf)]
	}
	return hs, nil
}
