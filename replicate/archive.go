package replicate

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pierrec/lz4/v4"

	"doppel/replicate/store"
)

// An archive is one portable file holding an app's whole context at one
// epoch, so it can be hibernated and resumed later on any node. It is an
// LZ4 frame (blocks checksummed) around a tar stream of, in this order:
//
//	archive.json      ArchiveHeader: format, app state, epoch number
//	epoch.bin         the store.Epoch: manifest, image files, data-file set
//	images/<name>     the materialised CRIU image files
//	data/<i>          content of the i-th regular file of the data set
//	init/doppel       the app's init binary (CRIU maps it by path)
//
// Import checks every piece against epoch.bin's hashes and the init's
// SHA-256 before anything becomes visible.

// ArchiveFormat is the version of the archive layout.
const ArchiveFormat = 1

// ErrBadArchive means the archive is damaged, truncated or not an archive.
var ErrBadArchive = errors.New("bad archive")

// ArchiveHeader is archive.json.
type ArchiveHeader struct {
	Format  int       `json:"format"`
	App     AppState  `json:"app"`
	Epoch   uint64    `json:"epoch"`
	Created time.Time `json:"created"`
	// Bytes is the total size of the entries that follow, for progress.
	Bytes int64 `json:"bytes"`
}

// Progress is told how many bytes of how many are done. It may be nil.
type Progress func(done, total int64)

// Export writes an archive of the app's epoch (0: newest) to w.
func (e *Engine) Export(ctx context.Context, name string, epoch uint64, w io.Writer, progress Progress) (*ArchiveHeader, error) {
	st, err := e.apps.load(name)
	if err != nil {
		return nil, err
	}
	if epoch == 0 {
		if epoch, err = e.store.Latest(name); err != nil {
			return nil, fmt.Errorf("export %s: %w (take one with doppel checkpoint %s)", name, err, name)
		}
	}
	ep, release, err := e.store.Pin(name, epoch)
	if err != nil {
		return nil, fmt.Errorf("export %s epoch %d: %w", name, epoch, err)
	}
	defer release()
	imgDir, err := os.MkdirTemp(e.cfg.WorkDir, "doppel-export-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(imgDir)
	if err := e.store.Materialise(ctx, name, epoch, imgDir); err != nil {
		return nil, fmt.Errorf("export %s epoch %d: %w", name, epoch, err)
	}
	if err := verifyImages(ctx, imgDir, ep.Images); err != nil {
		return nil, fmt.Errorf("export %s epoch %d: %w", name, epoch, err)
	}
	epBin, err := ep.MarshalBinary()
	if err != nil {
		return nil, err
	}
	var initSize int64
	if st.InitExe != "" {
		fi, err := os.Stat(st.InitExe)
		if err != nil {
			return nil, fmt.Errorf("export %s: init binary: %w", name, err)
		}
		initSize = fi.Size()
	}
	h := &ArchiveHeader{Format: ArchiveFormat, App: *st, Epoch: epoch, Created: time.Now().UTC()}
	h.App.Pid, h.App.PidStart = 0, 0
	h.Bytes = int64(len(epBin)) + initSize
	for _, f := range ep.Images {
		if f.Kind != store.KindSymlink {
			h.Bytes += f.Size
		}
	}
	if ep.Data != nil {
		for _, f := range ep.Data.Files {
			if f.Mode.IsRegular() {
				h.Bytes += f.Size
			}
		}
	}
	hj, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return nil, err
	}

	zw := lz4.NewWriter(w)
	if err := zw.Apply(lz4.BlockChecksumOption(true), lz4.ChecksumOption(true), lz4.ConcurrencyOption(-1)); err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	pw := &progressWriter{ctx: ctx, total: h.Bytes, fn: progress}
	add := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: h.Created, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		var w io.Writer = tw
		if name != "archive.json" { // the header is not counted in h.Bytes
			w = io.MultiWriter(tw, pw)
		}
		n, err := io.Copy(w, r)
		if err == nil && n != size {
			err = fmt.Errorf("%s changed while exported: %d bytes, expected %d", name, n, size)
		}
		return err
	}
	fail := func(err error) (*ArchiveHeader, error) {
		return nil, fmt.Errorf("export %s epoch %d: %w", name, epoch, err)
	}
	if err := add("archive.json", int64(len(hj)), bytes.NewReader(hj)); err != nil {
		return fail(err)
	}
	if err := add("epoch.bin", int64(len(epBin)), bytes.NewReader(epBin)); err != nil {
		return fail(err)
	}
	for _, f := range ep.Images {
		if f.Kind == store.KindSymlink {
			continue
		}
		if err := addFile(add, "images/"+f.Name, filepath.Join(imgDir, f.Name)); err != nil {
			return fail(err)
		}
	}
	if ep.Data != nil {
		for i, f := range ep.Data.Files {
			if !f.Mode.IsRegular() {
				continue
			}
			r := &blockReader{s: e.store, hashes: f.Blocks, size: f.Size}
			if err := add("data/"+strconv.Itoa(i), f.Size, r); err != nil {
				return fail(fmt.Errorf("data file %s: %w", f.Path, err))
			}
		}
	}
	if st.InitExe != "" {
		if err := addFile(add, "init/doppel", st.InitExe); err != nil {
			return fail(err)
		}
	}
	if err := tw.Close(); err != nil {
		return fail(err)
	}
	if err := zw.Close(); err != nil {
		return fail(err)
	}
	pw.finish()
	return h, nil
}

func addFile(add func(string, int64, io.Reader) error, name, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return add(name, fi.Size(), f)
}

// blockReader reads a data file's content back from the store.
type blockReader struct {
	s      *store.Store
	hashes []store.Hash
	size   int64
	buf    []byte
	off    int64
}

func (r *blockReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.off >= r.size || len(r.hashes) == 0 {
			return 0, io.EOF
		}
		h := r.hashes[0]
		r.hashes = r.hashes[1:]
		if h.IsZeroPage() {
			r.buf = make([]byte, store.PageSize)
		} else {
			b, err := r.s.Get(h)
			if err != nil {
				return 0, err
			}
			r.buf = b
		}
		if rem := r.size - r.off; int64(len(r.buf)) > rem {
			r.buf = r.buf[:rem]
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.off += int64(n)
	return n, nil
}

// progressWriter counts bytes for a Progress and stops on cancellation.
type progressWriter struct {
	ctx         context.Context
	done, total int64
	reported    int64 // done at the last call of fn
	fn          Progress
	last        time.Time
}

// finish reports the final count if the last write did not.
func (p *progressWriter) finish() {
	if p.fn != nil && p.reported != p.done {
		p.reported = p.done
		p.fn(p.done, p.total)
	}
}

func (p *progressWriter) Write(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	p.done += int64(len(b))
	if p.fn != nil && (time.Since(p.last) > 100*time.Millisecond || p.done == p.total) {
		p.last = time.Now()
		p.reported = p.done
		p.fn(p.done, p.total)
	}
	return len(b), nil
}

// ImportOptions are the caller's inputs to Import.
type ImportOptions struct {
	Progress Progress
}

// Import reads an archive written by Export into this node's store and
// registers the app (not running; Restore starts it). The app must not
// already exist here. Nothing becomes visible unless the whole archive is
// intact.
func (e *Engine) Import(ctx context.Context, r io.Reader, opts ImportOptions) (*AppState, *store.Epoch, error) {
	tr := tar.NewReader(lz4.NewReader(r))
	next := func(want string) (*tar.Header, error) {
		hd, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrBadArchive, want, err)
		}
		if hd.Typeflag != tar.TypeReg || hd.Size < 0 {
			return nil, fmt.Errorf("%w: entry %q is not a regular file", ErrBadArchive, hd.Name)
		}
		if want != "" && hd.Name != want {
			return nil, fmt.Errorf("%w: found %q where %s belongs", ErrBadArchive, hd.Name, want)
		}
		return hd, nil
	}
	readSmall := func(hd *tar.Header, max int64) ([]byte, error) {
		if hd.Size > max {
			return nil, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrBadArchive, hd.Name, hd.Size, max)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrBadArchive, hd.Name, err)
		}
		return b, nil
	}

	hd, err := next("archive.json")
	if err != nil {
		return nil, nil, err
	}
	b, err := readSmall(hd, 1<<20)
	if err != nil {
		return nil, nil, err
	}
	var h ArchiveHeader
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, nil, fmt.Errorf("%w: archive.json: %v", ErrBadArchive, err)
	}
	if h.Format != ArchiveFormat {
		return nil, nil, fmt.Errorf("%w: format %d, this doppel reads %d (use a matching doppel version)", ErrBadArchive, h.Format, ArchiveFormat)
	}
	name := h.App.Spec.Name
	if err := ValidName(name); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadArchive, err)
	}
	unlock, err := e.apps.lock(name, true)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	if _, err := e.apps.load(name); err == nil {
		return nil, nil, fmt.Errorf("%w: %s is already registered on this node (doppel rm %s, or import elsewhere)", ErrAppExists, name, name)
	}
	if ns, err := e.store.Epochs(name); err == nil && len(ns) > 0 {
		return nil, nil, fmt.Errorf("%w: the store already holds epochs of %s", ErrAppExists, name)
	}
	pw := &progressWriter{ctx: ctx, total: h.Bytes, fn: opts.Progress}

	hd, err = next("epoch.bin")
	if err != nil {
		return nil, nil, err
	}
	if b, err = readSmall(hd, 1<<30); err != nil {
		return nil, nil, err
	}
	_, _ = pw.Write(b)
	var ep store.Epoch
	if err := ep.UnmarshalBinary(b); err != nil {
		return nil, nil, fmt.Errorf("%w: epoch.bin: %v", ErrBadArchive, err)
	}
	if ep.Manifest.App != name || ep.Manifest.Epoch != h.Epoch {
		return nil, nil, fmt.Errorf("%w: epoch.bin is %s epoch %d, archive.json says %s epoch %d", ErrBadArchive, ep.Manifest.App, ep.Manifest.Epoch, name, h.Epoch)
	}

	tx, err := e.store.Begin(name, h.Epoch, 0)
	if err != nil {
		return nil, nil, err
	}
	committed := false
	defer func() {
		if !committed {
			tx.Abort()
		}
	}()
	imgDir, err := os.MkdirTemp(e.cfg.WorkDir, "doppel-import-"+name+"-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(imgDir)

	regular := map[int]*store.DataFile{}
	if ep.Data != nil {
		for i := range ep.Data.Files {
			if ep.Data.Files[i].Mode.IsRegular() {
				regular[i] = &ep.Data.Files[i]
			}
		}
	}
	wantImages := map[string]int64{}
	for _, f := range ep.Images {
		if f.Kind != store.KindSymlink {
			wantImages[f.Name] = f.Size
		}
	}
	var initTmp string
	for {
		hd, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadArchive, err)
		}
		switch {
		case strings.HasPrefix(hd.Name, "images/"):
			base := strings.TrimPrefix(hd.Name, "images/")
			size, ok := wantImages[base]
			if !ok || size != hd.Size {
				return nil, nil, fmt.Errorf("%w: unexpected image %q (%d bytes)", ErrBadArchive, hd.Name, hd.Size)
			}
			delete(wantImages, base)
			if err := copyTo(filepath.Join(imgDir, base), io.TeeReader(tr, pw), hd.Size); err != nil {
				return nil, nil, err
			}
		case strings.HasPrefix(hd.Name, "data/"):
			i, err := strconv.Atoi(strings.TrimPrefix(hd.Name, "data/"))
			f, ok := regular[i]
			if err != nil || !ok || f.Size != hd.Size {
				return nil, nil, fmt.Errorf("%w: unexpected data entry %q", ErrBadArchive, hd.Name)
			}
			delete(regular, i)
			if err := putBlocks(tx, io.TeeReader(tr, pw), f); err != nil {
				return nil, nil, err
			}
		case hd.Name == "init/doppel":
			if initTmp, err = e.stageInit(io.TeeReader(tr, pw), hd.Size, h.App.InitSum); err != nil {
				return nil, nil, err
			}
			defer os.Remove(initTmp)
		default:
			return nil, nil, fmt.Errorf("%w: unexpected entry %q", ErrBadArchive, hd.Name)
		}
	}
	if len(wantImages) > 0 || len(regular) > 0 {
		return nil, nil, fmt.Errorf("%w: truncated: %d image files and %d data files missing", ErrBadArchive, len(wantImages), len(regular))
	}
	if h.App.InitExe != "" && initTmp == "" {
		return nil, nil, fmt.Errorf("%w: the init binary is missing", ErrBadArchive)
	}
	for _, f := range ep.Images {
		if f.Kind == store.KindSymlink {
			if err := os.Symlink(f.Target, filepath.Join(imgDir, f.Name)); err != nil {
				return nil, nil, err
			}
		}
	}
	// The images are stored by what they hash to now: make sure that is
	// what the epoch lists.
	if err := verifyImages(ctx, imgDir, ep.Images); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadArchive, err)
	}
	if err := tx.AddImageDir(ctx, imgDir); err != nil {
		return nil, nil, err
	}
	tx.SetData(ep.Data)
	// The init goes into place before the epoch becomes visible: an epoch
	// without its init cannot be restored, and a failed import must be
	// retryable.
	if initTmp != "" {
		if err := placeInit(initTmp, h.App.InitExe, h.App.InitSum); err != nil {
			return nil, nil, err
		}
	}
	m := ep.Manifest
	m.Parent = 0
	m.ClusterTerm = 0 // the old cluster's terms mean nothing here
	out, err := tx.Commit(m)
	if err != nil {
		return nil, nil, fmt.Errorf("import %s: %w", name, err)
	}
	committed = true
	pw.finish()
	// The log paths stay those of the archive: the restored app keeps
	// writing to the files it had open (the restore creates them).
	st := h.App
	st.Pid, st.PidStart = 0, 0
	st.LastEpoch = max(st.LastEpoch, h.Epoch)
	st.Cgroup = ""
	if err := e.apps.save(&st); err != nil {
		return nil, nil, err
	}
	e.log.Info("app imported", "app", name, "epoch", h.Epoch)
	return &st, out, nil
}

func copyTo(path string, r io.Reader, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(r, size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("%w: %s truncated", ErrBadArchive, filepath.Base(path))
	}
	return err
}

// putBlocks stores a data file's content, checking every block against the
// hash the epoch lists for it.
func putBlocks(tx *store.Txn, r io.Reader, f *store.DataFile) error {
	buf := make([]byte, store.PageSize)
	var off int64
	for i, want := range f.Blocks {
		n := int64(store.PageSize)
		if rem := f.Size - off; rem < n {
			n = rem
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return fmt.Errorf("%w: data file %s: %v", ErrBadArchive, f.Path, err)
		}
		off += n
		got := store.Sum(buf[:n])
		if got != want {
			return fmt.Errorf("%w: data file %s block %d does not match its hash", ErrBadArchive, f.Path, i)
		}
		if !tx.Has(got) {
			if err := tx.Put(got, append([]byte(nil), buf[:n]...)); err != nil {
				return err
			}
		}
	}
	if off != f.Size {
		return fmt.Errorf("%w: data file %s: %d bytes of blocks for %d", ErrBadArchive, f.Path, off, f.Size)
	}
	return nil
}

// stageInit writes the archive's init binary to a temporary file and checks
// its SHA-256.
func (e *Engine) stageInit(r io.Reader, size int64, sum string) (string, error) {
	f, err := os.CreateTemp(e.cfg.WorkDir, "doppel-init-")
	if err != nil {
		return "", err
	}
	hsh := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, hsh), io.LimitReader(r, size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("%w: init binary truncated", ErrBadArchive)
	}
	if err == nil && hex.EncodeToString(hsh.Sum(nil)) != sum {
		err = fmt.Errorf("%w: init binary does not match its SHA-256", ErrBadArchive)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// placeInit puts the init binary at the path the epoch's images name, unless
// an identical one is there already.
func placeInit(tmp, path, sum string) error {
	if got, err := initSum(path); err == nil {
		if got == sum {
			return nil
		}
		return fmt.Errorf("import: %s exists with other content than the app's init (sha256 %s)", path, sum)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	src, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, src, 0o755)
}
