package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Txn writes one epoch. Content goes into new packs under temporary names;
// Commit makes packs and epoch durable and visible at once, Abort (or a
// crash) leaves no trace. A Txn is not safe for concurrent use; several
// transactions (of different epochs) may run at once.
//
// Typical use on the node that runs the app:
//
//	t, err := st.Begin(app, n, parent)
//	defer t.Abort()
//	set, counts, err := datafile.Snapshot(paths, prev, t, datafile.DefaultConfig())
//	t.SetData(set)
//	err = t.AddImageDir(ctx, criuDir)
//	m.Data = counts
//	ep, err := t.Commit(m)
type Txn struct {
	s      *Store
	app    string
	epoch  uint64
	parent uint64
	start  time.Time

	writers []*packWriter // the last one is being appended to
	pending map[Hash]pendingLoc
	stored  int64

	images   []ImageFile
	data     *DataSet
	ingested bool
	ingest   ingestCounts

	done bool
	err  error // first write error; the transaction can only be aborted
}

type pendingLoc struct {
	w   *packWriter
	off int64
	n   uint32
}

type ingestCounts struct {
	pages  PageCounts
	images ImageCounts
	bytes  ByteCounts
	dur    time.Duration
}

// Begin starts the transaction that writes epoch n of app, whose parent is
// parent (0 for none). It fails with ErrEpochExists if the epoch is already
// stored. While any transaction is open, GC waits.
func (s *Store) Begin(app string, n, parent uint64) (*Txn, error) {
	if !ValidApp(app) {
		return nil, fmt.Errorf("%w: %q", ErrBadName, app)
	}
	if n == 0 || parent >= n {
		return nil, fmt.Errorf("begin %s epoch %d: epoch must be > 0 and > parent %d", app, n, parent)
	}
	if _, err := os.Stat(s.epochDir(app, n)); err == nil {
		return nil, fmt.Errorf("begin %s epoch %d: %w", app, n, ErrEpochExists)
	}
	s.gcMu.RLock()
	t := &Txn{s: s, app: app, epoch: n, parent: parent, start: time.Now(), pending: make(map[Hash]pendingLoc)}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		s.gcMu.RUnlock()
		return nil, ErrClosed
	}
	return t, nil
}

// App returns the app the transaction writes.
func (t *Txn) App() string { return t.app }

// Epoch returns the number of the epoch the transaction writes.
func (t *Txn) Epoch() uint64 { return t.epoch }

// Parent returns the parent epoch number given to Begin.
func (t *Txn) Parent() uint64 { return t.parent }

// Has reports whether content with hash h is in the store or was written by
// this transaction.
func (t *Txn) Has(h Hash) bool {
	if _, ok := t.pending[h]; ok {
		return true
	}
	return t.s.Has(h)
}

// Put stores data under h unless it is already held. data must hash to h
// (ErrHashMismatch otherwise) and be at most ChunkSize bytes. A write error
// (disk full) is returned and fails the transaction.
func (t *Txn) Put(h Hash, data []byte) error {
	if err := t.usable(); err != nil {
		return err
	}
	if len(data) > ChunkSize {
		return fmt.Errorf("put %s: %d bytes exceeds %d", h, len(data), ChunkSize)
	}
	if Sum(data) != h {
		return fmt.Errorf("put %s: %w", h, ErrHashMismatch)
	}
	if t.Has(h) {
		return nil
	}
	return t.put(h, data)
}

// put appends data that is known to hash to h and not to be held.
func (t *Txn) put(h Hash, data []byte) error {
	w, err := t.writer(int64(len(data)))
	if err != nil {
		return err
	}
	off, err := w.append(h, data)
	if err != nil {
		return t.fail(err)
	}
	t.pending[h] = pendingLoc{w: w, off: off, n: uint32(len(data))}
	t.stored += int64(len(data))
	return nil
}

// writer returns the pack writer to append n bytes to, starting a new pack
// when the current one would exceed Config.PackSize.
func (t *Txn) writer(n int64) (*packWriter, error) {
	if len(t.writers) > 0 {
		w := t.writers[len(t.writers)-1]
		if w.size() == 0 || w.size()+n <= t.s.cfg.PackSize {
			return w, nil
		}
		if err := w.flush(); err != nil {
			return nil, t.fail(err)
		}
	}
	w, err := newPackWriter(filepath.Join(t.s.root, dirPacks))
	if err != nil {
		return nil, t.fail(err)
	}
	t.writers = append(t.writers, w)
	return w, nil
}

// Get returns the content with hash h from this transaction or the store.
func (t *Txn) Get(h Hash) ([]byte, error) {
	if p, ok := t.pending[h]; ok {
		b := make([]byte, p.n)
		if err := p.w.readAt(b, p.off); err != nil {
			return nil, fmt.Errorf("read %s: %w", h, err)
		}
		return b, nil
	}
	return t.s.Get(h)
}

// SetImages sets the epoch's image files, for a transaction that received
// them (rather than ingesting an image directory).
func (t *Txn) SetImages(images []ImageFile) { t.images = images }

// SetData sets the epoch's data-file snapshot (nil for none).
func (t *Txn) SetData(d *DataSet) { t.data = d }

func (t *Txn) usable() error {
	if t.done {
		return fmt.Errorf("transaction of %s epoch %d: %w", t.app, t.epoch, ErrClosed)
	}
	return t.err
}

func (t *Txn) fail(err error) error {
	if t.err == nil {
		t.err = fmt.Errorf("%s epoch %d: %w", t.app, t.epoch, err)
	}
	return t.err
}

// Commit checks that every hash the epoch references is held, makes the new
// packs and the epoch durable (Config.Sync) and then visible, and returns
// the committed epoch. m's App, Epoch and Parent are set from the
// transaction, Created defaults to now, and when the transaction ingested an
// image directory its Pages, Images, Bytes and Phases.Ingest are filled.
// On error nothing becomes visible; the caller still calls Abort.
func (t *Txn) Commit(m Manifest) (*Epoch, error) {
	if err := t.usable(); err != nil {
		return nil, err
	}
	s := t.s
	cstart := time.Now()
	m.App, m.Epoch, m.Parent = t.app, t.epoch, t.parent
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	ep := &Epoch{Manifest: m, Images: t.images, Data: t.data}
	for i := range ep.Images {
		if err := ep.Images[i].validate(); err != nil {
			return nil, fmt.Errorf("commit %s epoch %d: %w", t.app, t.epoch, err)
		}
	}
	if ep.Data != nil {
		for i := range ep.Data.Files {
			if err := ep.Data.Files[i].validate(); err != nil {
				return nil, fmt.Errorf("commit %s epoch %d: %w", t.app, t.epoch, err)
			}
		}
	}
	var missing []Hash
	s.mu.RLock()
	ep.ForEachHash(func(h Hash) {
		if h.IsZeroPage() {
			return
		}
		if _, ok := t.pending[h]; ok {
			return
		}
		if _, ok := s.idx[h]; !ok {
			missing = append(missing, h)
		}
	})
	s.mu.RUnlock()
	if len(missing) > 0 {
		return nil, fmt.Errorf("commit %s epoch %d: %w: %d hashes, first %s", t.app, t.epoch, ErrIncomplete, len(missing), missing[0])
	}

	// Packs first: durable, renamed, opened for reading.
	var packs []*pack
	closePacks := func() {
		for _, p := range packs {
			_ = p.f.Close()
		}
	}
	for _, w := range t.writers {
		path, err := w.finish(s.cfg.Sync)
		if err != nil {
			closePacks()
			return nil, t.fail(err)
		}
		f, err := os.Open(path)
		if err != nil {
			closePacks()
			return nil, t.fail(err)
		}
		packs = append(packs, &pack{id: w.id, path: path, f: f, size: w.flushed, refs: 1})
	}
	if s.cfg.Sync && len(t.writers) > 0 {
		if err := syncDir(filepath.Join(s.root, dirPacks)); err != nil {
			closePacks()
			return nil, t.fail(err)
		}
	}

	if t.ingested {
		ep.Manifest.Pages = t.ingest.pages
		ep.Manifest.Images = t.ingest.images
		ep.Manifest.Bytes = t.ingest.bytes
		ep.Manifest.Bytes.Stored = t.stored
		ep.Manifest.Phases.Ingest = t.ingest.dur + time.Since(cstart)
	}
	if err := s.writeEpoch(ep); err != nil {
		closePacks()
		return nil, t.fail(err)
	}

	s.mu.Lock()
	for i, p := range packs {
		s.addPackLocked(p, t.writers[i].entries)
	}
	s.mu.Unlock()
	t.writers = nil
	t.finish()
	s.cfg.Logger.Info("epoch committed", "app", t.app, "epoch", t.epoch, "bytes", t.stored,
		"pages_new", ep.Manifest.Pages.New, "pages_changed", ep.Manifest.Pages.Changed)
	return ep, nil
}

// writeEpoch writes the epoch directory under a temporary name and renames
// it into place.
func (s *Store) writeEpoch(ep *Epoch) error {
	app, n := ep.Manifest.App, ep.Manifest.Epoch
	bin, err := ep.MarshalBinary()
	if err != nil {
		return err
	}
	mj, err := json.MarshalIndent(&ep.Manifest, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	adir := s.appDir(app)
	if err := os.MkdirAll(adir, 0o700); err != nil {
		return fmt.Errorf("create app dir: %w", err)
	}
	tmp, err := os.MkdirTemp(adir, prefixTmp+epochDirName(n)+"-")
	if err != nil {
		return fmt.Errorf("create epoch dir: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := writeFile(filepath.Join(tmp, fileEpoch), bin, s.cfg.Sync); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(tmp, fileManifest), append(mj, '\n'), s.cfg.Sync); err != nil {
		return err
	}
	if s.cfg.Sync {
		if err := syncDir(tmp); err != nil {
			return err
		}
	}
	if s.testBeforeEpochRename != nil {
		s.testBeforeEpochRename()
	}
	final := s.epochDir(app, n)
	s.mu.Lock()
	_, statErr := os.Stat(final)
	if statErr == nil {
		s.mu.Unlock()
		return fmt.Errorf("commit %s epoch %d: %w", app, n, ErrEpochExists)
	}
	if !errors.Is(statErr, fs.ErrNotExist) {
		s.mu.Unlock()
		return fmt.Errorf("commit %s epoch %d: %w", app, n, statErr)
	}
	err = os.Rename(tmp, final)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("commit %s epoch %d: %w", app, n, err)
	}
	ok = true
	if s.cfg.Sync {
		if err := syncDir(adir); err != nil {
			return err
		}
	}
	return nil
}

// Abort discards everything the transaction wrote. It is a no-op after
// Commit succeeded or a previous Abort, so it can be deferred.
func (t *Txn) Abort() {
	if t.done {
		return
	}
	for _, w := range t.writers {
		w.discard()
	}
	t.writers = nil
	t.finish()
}

func (t *Txn) finish() {
	t.done = true
	t.pending = nil
	t.s.gcMu.RUnlock()
}
