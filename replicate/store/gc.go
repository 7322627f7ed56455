package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// GCStats reports what a GC run did.
type GCStats struct {
	EpochsDeleted  int           // epoch directories removed by retention
	PacksDeleted   int           // packs with no live record, removed
	PacksCompacted int           // packs rewritten because little of them was live
	BytesReclaimed int64         // pack bytes freed
	LiveBytes      int64         // pack bytes still referenced
	Duration       time.Duration // wall time
}

// GC deletes every app's epochs beyond the newest Config.Retention (never a
// pinned one), then deletes packs no remaining epoch references and
// compacts packs whose live ratio is below Config.CompactBelow. It waits for
// open transactions to finish and blocks new ones while it runs; reads go
// on. A GC interrupted by a crash leaves a store that Open repairs.
func (s *Store) GC(ctx context.Context) (GCStats, error) {
	start := time.Now()
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	var st GCStats
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return st, ErrClosed
	}

	apps, err := s.Apps()
	if err != nil {
		return st, err
	}
	// Retention, then the live set of every remaining epoch.
	live := make(map[Hash]struct{})
	for _, app := range apps {
		ns, err := s.Epochs(app)
		if err != nil {
			return st, err
		}
		keep := s.cfg.Retention
		for i := len(ns) - 1; i >= 0; i-- {
			n := ns[i]
			// Beyond retention and not pinned (doom refuses a pinned one):
			// delete it.
			if keep <= 0 && s.doom(app, []uint64{n}) == nil {
				err := s.deleteEpoch(app, n)
				s.undoom(app, []uint64{n})
				if err != nil {
					return st, err
				}
				st.EpochsDeleted++
				continue
			}
			keep--
			ep, err := s.Load(app, n)
			if err != nil {
				return st, fmt.Errorf("gc: %w", err)
			}
			ep.ForEachHash(func(h Hash) { live[h] = struct{}{} })
		}
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}

	// Live bytes per pack: a record is live when an epoch references its
	// hash and the index points at it (a duplicate elsewhere is dead).
	s.mu.RLock()
	liveBytes := make(map[*pack]int64, len(s.packs))
	for h := range live {
		if l, ok := s.idx[h]; ok {
			liveBytes[l.p] += int64(l.n)
		}
	}
	packs := make([]*pack, 0, len(s.packs))
	for _, p := range s.packs {
		packs = append(packs, p)
	}
	s.mu.RUnlock()
	sort.Slice(packs, func(i, j int) bool { return packs[i].id < packs[j].id })

	for _, p := range packs {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		lb := liveBytes[p]
		switch {
		case lb == 0:
			s.dropPack(p)
			st.PacksDeleted++
			st.BytesReclaimed += p.size
		case p.size > 0 && float64(lb)/float64(p.size) < s.cfg.CompactBelow:
			if err := s.compact(p, live); err != nil {
				return st, err
			}
			st.PacksCompacted++
			st.BytesReclaimed += p.size - lb
			st.LiveBytes += lb
		default:
			st.LiveBytes += lb
		}
	}
	st.Duration = time.Since(start)
	s.cfg.Logger.Info("store gc", "epochs_deleted", st.EpochsDeleted, "packs_deleted", st.PacksDeleted,
		"packs_compacted", st.PacksCompacted, "bytes", st.BytesReclaimed)
	return st, nil
}

// deleteEpoch renames the epoch directory out of sight, then removes it.
func (s *Store) deleteEpoch(app string, n uint64) error {
	dir := s.epochDir(app, n)
	trash := filepath.Join(s.appDir(app), prefixTrash+epochDirName(n))
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("gc: delete %s epoch %d: %w", app, n, err)
	}
	if s.cfg.Sync {
		if err := syncDir(s.appDir(app)); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("gc: delete %s epoch %d: %w", app, n, err)
	}
	return nil
}

// dropPack removes a pack from the index and from disk. Reads in flight keep
// its file open until they finish.
func (s *Store) dropPack(p *pack) {
	s.mu.Lock()
	for h, l := range s.idx {
		if l.p == p {
			delete(s.idx, h)
		}
	}
	delete(s.packs, p.id)
	s.mu.Unlock()
	dir := filepath.Join(s.root, dirPacks)
	_ = os.Remove(filepath.Join(dir, p.id+idxExt)) // index first: a pack without one is garbage to Open
	_ = os.Remove(filepath.Join(dir, p.id+packExt))
	p.release()
}

// compact copies the live records of p into a new pack, points the index at
// it and drops p.
func (s *Store) compact(p *pack, live map[Hash]struct{}) error {
	type rec struct {
		h Hash
		l loc
	}
	var recs []rec
	s.mu.RLock()
	for h := range live {
		if l, ok := s.idx[h]; ok && l.p == p {
			recs = append(recs, rec{h, l})
		}
	}
	s.mu.RUnlock()
	sort.Slice(recs, func(i, j int) bool { return recs[i].l.off < recs[j].l.off })

	w, err := newPackWriter(filepath.Join(s.root, dirPacks))
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	for i := 0; i < len(recs); {
		// Copy runs of adjacent records at once.
		j, end := i+1, recs[i].l.off+int64(recs[i].l.n)
		for j < len(recs) && recs[j].l.off == end {
			end += int64(recs[j].l.n)
			j++
		}
		rel := make([]idxEntry, 0, j-i)
		for _, r := range recs[i:j] {
			rel = append(rel, idxEntry{h: r.h, off: r.l.off - recs[i].l.off, n: r.l.n})
		}
		if err := w.appendRun(p.f, recs[i].l.off, end-recs[i].l.off, rel); err != nil {
			w.discard()
			return fmt.Errorf("gc: compact pack %s: %w", p.id, err)
		}
		i = j
	}
	path, err := w.finish(s.cfg.Sync)
	if err != nil {
		w.discard()
		return fmt.Errorf("gc: compact pack %s: %w", p.id, err)
	}
	if s.cfg.Sync {
		if err := syncDir(filepath.Join(s.root, dirPacks)); err != nil {
			w.discard()
			return err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		w.discard()
		return fmt.Errorf("gc: compact pack %s: %w", p.id, err)
	}
	np := &pack{id: w.id, path: path, f: f, size: w.flushed, refs: 1}
	s.mu.Lock()
	s.packs[np.id] = np
	for _, e := range w.entries {
		s.idx[e.h] = loc{p: np, off: e.off, n: e.n}
	}
	s.mu.Unlock()
	s.dropPack(p)
	return nil
}
