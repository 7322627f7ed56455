package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

const (
	dirPacks     = "packs"
	dirApps      = "apps"
	dirScratch   = "scratch"
	fileLock     = "LOCK"
	fileEpoch    = "epoch.bin"
	fileManifest = "manifest.json"
	prefixTmp    = ".tmp-"
	prefixTrash  = ".trash-"
)

// Store is a content-addressed store of epochs on local disk. Its methods
// are safe for concurrent use. One directory is used by at most one Store at
// a time (Open takes an exclusive lock on it).
type Store struct {
	root string
	cfg  Config
	lock *os.File

	// gcMu is held shared by every open transaction and exclusively by GC,
	// so GC never reclaims content a transaction has found present.
	gcMu sync.RWMutex

	mu     sync.RWMutex // guards the fields below
	idx    map[Hash]loc
	packs  map[string]*pack
	pins   map[epochKey]int
	doomed map[epochKey]bool // being deleted: Pin refuses them
	closed bool

	// testBeforeEpochRename, when set, runs between making the packs durable
	// and renaming the epoch directory into place (crash tests).
	testBeforeEpochRename func()
}

type epochKey struct {
	app string
	n   uint64
}

// Open opens (creating if needed) the store in dir. It removes what an
// interrupted transaction, ingest or GC left behind (temporary epoch
// directories, uncommitted packs) and loads the pack indexes.
func Open(dir string, cfg Config) (*Store, error) {
	cfg = cfg.normalized()
	for _, d := range []string{dir, filepath.Join(dir, dirPacks), filepath.Join(dir, dirApps), filepath.Join(dir, dirScratch)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, fileLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = lock.Close()
		return nil, fmt.Errorf("open store %s: locked by another process: %w", dir, err)
	}
	s := &Store{
		root:   dir,
		cfg:    cfg,
		lock:   lock,
		idx:    make(map[Hash]loc),
		packs:  make(map[string]*pack),
		pins:   make(map[epochKey]int),
		doomed: make(map[epochKey]bool),
	}
	if err := s.recover(); err != nil {
		s.closeFiles()
		return nil, err
	}
	return s, nil
}

// recover deletes leftovers of interrupted work and loads the packs.
func (s *Store) recover() error {
	apps, err := os.ReadDir(filepath.Join(s.root, dirApps))
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	for _, a := range apps {
		ents, err := os.ReadDir(filepath.Join(s.root, dirApps, a.Name()))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefixTmp) || strings.HasPrefix(e.Name(), prefixTrash) {
				if err := os.RemoveAll(filepath.Join(s.root, dirApps, a.Name(), e.Name())); err != nil {
					return fmt.Errorf("open store: remove leftover: %w", err)
				}
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(s.root, dirScratch)); err != nil {
		return fmt.Errorf("open store: clear scratch: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(s.root, dirScratch), 0o700); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	pdir := filepath.Join(s.root, dirPacks)
	ents, err := os.ReadDir(pdir)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	names := make(map[string]bool)
	for _, e := range ents {
		names[e.Name()] = true
	}
	for name := range names {
		switch {
		case strings.HasSuffix(name, tmpExt):
			_ = os.Remove(filepath.Join(pdir, name))
		case strings.HasSuffix(name, packExt):
			id := strings.TrimSuffix(name, packExt)
			if !names[id+idxExt] { // written, never committed
				_ = os.Remove(filepath.Join(pdir, name))
				continue
			}
			if err := s.loadPack(id); err != nil {
				s.cfg.Logger.Error("store: skipping unreadable pack", "pack", id, "err", err)
			}
		case strings.HasSuffix(name, idxExt):
			if !names[strings.TrimSuffix(name, idxExt)+packExt] { // GC removed the pack, not yet the index
				_ = os.Remove(filepath.Join(pdir, name))
			}
		}
	}
	return nil
}

func (s *Store) loadPack(id string) error {
	path := filepath.Join(s.root, dirPacks, id+packExt)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return err
	}
	b, err := os.ReadFile(filepath.Join(s.root, dirPacks, id+idxExt))
	if err != nil {
		_ = f.Close()
		return err
	}
	entries, err := decodeIdx(b, st.Size())
	if err != nil {
		_ = f.Close()
		return err
	}
	p := &pack{id: id, path: path, f: f, size: st.Size(), refs: 1}
	s.mu.Lock()
	s.addPackLocked(p, entries)
	s.mu.Unlock()
	return nil
}

func (s *Store) addPackLocked(p *pack, entries []idxEntry) {
	s.packs[p.id] = p
	for _, e := range entries {
		if _, ok := s.idx[e.h]; !ok {
			s.idx[e.h] = loc{p: p, off: e.off, n: e.n}
		}
	}
}

// Close releases the store after waiting for open transactions to be
// committed or aborted (and for a running GC). Reads in flight finish; later
// calls return ErrClosed.
func (s *Store) Close() error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.closeFiles()
	return nil
}

func (s *Store) closeFiles() {
	s.mu.Lock()
	for id, p := range s.packs {
		delete(s.packs, id)
		p.release()
	}
	s.idx = make(map[Hash]loc)
	s.mu.Unlock()
	if s.lock != nil {
		_ = s.lock.Close()
	}
}

// Dir returns the store's root directory.
func (s *Store) Dir() string { return s.root }

// Config returns the configuration the store runs with.
func (s *Store) Config() Config { return s.cfg }

// ScratchDir creates and returns a new empty directory on the store's file
// system, for CRIU to dump into before the images are ingested. It is the
// caller's to remove; Open empties the scratch area.
func (s *Store) ScratchDir(prefix string) (string, error) {
	d, err := os.MkdirTemp(filepath.Join(s.root, dirScratch), prefix)
	if err != nil {
		return "", fmt.Errorf("scratch dir: %w", err)
	}
	return d, nil
}

// Has reports whether the store holds content with hash h.
func (s *Store) Has(h Hash) bool {
	if h.IsZeroPage() {
		return true
	}
	s.mu.RLock()
	_, ok := s.idx[h]
	s.mu.RUnlock()
	return ok
}

// lookup finds h and takes a reference on its pack; the caller releases it.
func (s *Store) lookup(h Hash) (loc, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return loc{}, ErrClosed
	}
	l, ok := s.idx[h]
	if !ok || !l.p.acquire() {
		return loc{}, fmt.Errorf("%w: %s", ErrNotFound, h)
	}
	return l, nil
}

// Get returns a copy of the content with hash h, checked against h.
func (s *Store) Get(h Hash) ([]byte, error) {
	if h.IsZeroPage() {
		return make([]byte, PageSize), nil
	}
	l, err := s.lookup(h)
	if err != nil {
		return nil, err
	}
	defer l.p.release()
	b := make([]byte, l.n)
	if _, err := l.p.f.ReadAt(b, l.off); err != nil {
		return nil, fmt.Errorf("read %s: %w", h, err)
	}
	if Sum(b) != h {
		return nil, fmt.Errorf("%w: content of %s in pack %s", ErrCorrupt, h, l.p.id)
	}
	return b, nil
}

// Fetch calls fn for each hash of hs in order with its content, checked
// against the hash. Records that lie next to each other in a pack are read
// with one system call. data is valid only during the call and must not be
// modified. Fetch stops at the first error, fn's included.
func (s *Store) Fetch(hs []Hash, fn func(i int, data []byte) error) error {
	const maxRun = 4 << 20
	zero := make([]byte, PageSize)
	buf := make([]byte, maxRun)
	for i := 0; i < len(hs); {
		if hs[i].IsZeroPage() {
			if err := fn(i, zero); err != nil {
				return err
			}
			i++
			continue
		}
		first, err := s.lookup(hs[i])
		if err != nil {
			return err
		}
		// Extend the run while the next records follow in the same pack.
		locs := []loc{first}
		end := first.off + int64(first.n)
		j := i + 1
		for ; j < len(hs) && !hs[j].IsZeroPage(); j++ {
			s.mu.RLock()
			l, ok := s.idx[hs[j]]
			s.mu.RUnlock()
			if !ok || l.p != first.p || l.off != end || end+int64(l.n)-first.off > maxRun {
				break
			}
			locs = append(locs, l)
			end += int64(l.n)
		}
		run := buf[:end-first.off]
		_, err = first.p.f.ReadAt(run, first.off)
		first.p.release()
		if err != nil {
			return fmt.Errorf("read %s: %w", hs[i], err)
		}
		for k, l := range locs {
			data := run[l.off-first.off : l.off-first.off+int64(l.n)]
			if Sum(data) != hs[i+k] {
				return fmt.Errorf("%w: content of %s in pack %s", ErrCorrupt, hs[i+k], l.p.id)
			}
			if err := fn(i+k, data); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}

// ValidApp reports whether name can name an app: 1 to 128 of [A-Za-z0-9._-],
// not starting with a dot.
func ValidApp(name string) bool {
	if name == "" || len(name) > 128 || name[0] == '.' {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (s *Store) appDir(app string) string { return filepath.Join(s.root, dirApps, app) }

func epochDirName(n uint64) string { return fmt.Sprintf("%020d", n) }

func (s *Store) epochDir(app string, n uint64) string {
	return filepath.Join(s.appDir(app), epochDirName(n))
}

// Apps returns the names of the apps that have a directory in the store,
// sorted.
func (s *Store) Apps() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, dirApps))
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && ValidApp(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Epochs returns the numbers of the app's complete epochs, ascending. An app
// the store has never seen has none.
func (s *Store) Epochs(app string) ([]uint64, error) {
	if !ValidApp(app) {
		return nil, fmt.Errorf("%w: %q", ErrBadName, app)
	}
	ents, err := os.ReadDir(s.appDir(app))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list epochs of %s: %w", app, err)
	}
	var out []uint64
	for _, e := range ents {
		if !e.IsDir() || len(e.Name()) != 20 {
			continue
		}
		n, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil || n == 0 {
			continue
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

// Latest returns the number of the app's newest complete epoch, or
// ErrNoEpoch.
func (s *Store) Latest(app string) (uint64, error) {
	ns, err := s.Epochs(app)
	if err != nil {
		return 0, err
	}
	if len(ns) == 0 {
		return 0, fmt.Errorf("%w: app %s has none", ErrNoEpoch, app)
	}
	return ns[len(ns)-1], nil
}

// Load reads a complete epoch's description.
func (s *Store) Load(app string, n uint64) (*Epoch, error) {
	if !ValidApp(app) {
		return nil, fmt.Errorf("%w: %q", ErrBadName, app)
	}
	b, err := os.ReadFile(filepath.Join(s.epochDir(app, n), fileEpoch))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s epoch %d", ErrNoEpoch, app, n)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s epoch %d: %w", app, n, err)
	}
	var e Epoch
	if err := e.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("load %s epoch %d: %w", app, n, err)
	}
	return &e, nil
}

// Pin loads an epoch and keeps GC from deleting it (and the content it
// references) until release is called. Senders and restores pin the epoch
// they read. release may be called more than once.
func (s *Store) Pin(app string, n uint64) (e *Epoch, release func(), err error) {
	k := epochKey{app, n}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, ErrClosed
	}
	if s.doomed[k] {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: %s epoch %d is being deleted", ErrNoEpoch, app, n)
	}
	s.pins[k]++
	s.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			if s.pins[k]--; s.pins[k] <= 0 {
				delete(s.pins, k)
			}
			s.mu.Unlock()
		})
	}
	e, err = s.Load(app, n)
	if err != nil {
		release()
		return nil, nil, err
	}
	return e, release, nil
}

// doom marks the app's epochs ns as being deleted, so that Pin refuses
// them from now on. It marks none and fails when one of them is pinned: a
// pin and a deletion cannot both pass. undoom clears the marks once the
// epochs are gone (or their deletion failed).
func (s *Store) doom(app string, ns []uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range ns {
		if s.pins[epochKey{app, n}] > 0 {
			return fmt.Errorf("%s epoch %d is being read", app, n)
		}
	}
	for _, n := range ns {
		s.doomed[epochKey{app, n}] = true
	}
	return nil
}

func (s *Store) undoom(app string, ns []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range ns {
		delete(s.doomed, epochKey{app, n})
	}
}

// Missing returns the hashes of hs the store does not hold (ZeroPageHash is
// always held), in order.
func (s *Store) Missing(hs []Hash) []Hash {
	var out []Hash
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, h := range hs {
		if h.IsZeroPage() {
			continue
		}
		if _, ok := s.idx[h]; !ok {
			out = append(out, h)
		}
	}
	return out
}
