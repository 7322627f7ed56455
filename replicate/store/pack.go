package store

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// A pack is an append-only file of records (page, image chunk or data
// block content, raw, back to back) plus an index file listing each record's
// hash, offset and length. Packs are written by one transaction, made
// durable and renamed into place before the epoch that references them is
// committed, and never modified afterwards; GC deletes or rewrites them.

const (
	packExt    = ".pack"
	idxExt     = ".idx"
	tmpExt     = ".tmp"
	idxEntrySz = 32
	encRaw     = 0 // record stored as is; other values are reserved
)

var idxMagic = [8]byte{'D', 'P', 'L', 'I', 'D', 'X', '0', '1'}

// pack is an open, committed pack file. The store holds one reference while
// the pack is in its index; readers take one for the duration of a read, so
// GC can drop a pack while a read from it is in flight.
type pack struct {
	id   string
	path string
	f    *os.File
	size int64

	mu   sync.Mutex
	refs int
}

func (p *pack) acquire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refs == 0 {
		return false
	}
	p.refs++
	return true
}

func (p *pack) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refs--
	if p.refs == 0 {
		_ = p.f.Close()
	}
}

// loc is where a record lives.
type loc struct {
	p   *pack
	off int64
	n   uint32
}

// idxEntry is one record of an index file.
type idxEntry struct {
	h   Hash
	off int64
	n   uint32
}

func newPackID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("pack id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func encodeIdx(entries []idxEntry) []byte {
	b := make([]byte, 0, 16+idxEntrySz*len(entries))
	b = append(b, idxMagic[:]...)
	var e [idxEntrySz]byte
	for _, ent := range entries {
		copy(e[:16], ent.h[:])
		binary.LittleEndian.PutUint64(e[16:], uint64(ent.off))
		binary.LittleEndian.PutUint32(e[24:], ent.n)
		e[28] = encRaw
		b = append(b, e[:]...)
	}
	return binary.LittleEndian.AppendUint64(b, xxh3.Hash(b))
}

func decodeIdx(b []byte, packSize int64) ([]idxEntry, error) {
	if len(b) < 16 || [8]byte(b[:8]) != idxMagic || (len(b)-16)%idxEntrySz != 0 {
		return nil, fmt.Errorf("%w: index: bad header or size", ErrCorrupt)
	}
	body := b[:len(b)-8]
	if xxh3.Hash(body) != binary.LittleEndian.Uint64(b[len(b)-8:]) {
		return nil, fmt.Errorf("%w: index: checksum mismatch", ErrCorrupt)
	}
	body = body[8:]
	out := make([]idxEntry, len(body)/idxEntrySz)
	for i := range out {
		e := body[i*idxEntrySz:]
		copy(out[i].h[:], e[:16])
		out[i].off = int64(binary.LittleEndian.Uint64(e[16:]))
		out[i].n = binary.LittleEndian.Uint32(e[24:])
		if e[28] != encRaw || out[i].n > ChunkSize || out[i].off < 0 || out[i].off+int64(out[i].n) > packSize {
			return nil, fmt.Errorf("%w: index: entry %d out of range", ErrCorrupt, i)
		}
	}
	return out, nil
}

// packWriter appends records to a new pack under a temporary name.
type packWriter struct {
	dir     string
	id      string
	f       *os.File
	buf     []byte // appended but not yet written, starting at flushed
	flushed int64  // bytes written to f
	entries []idxEntry
}

const writeBuf = 4 << 20

func newPackWriter(dir string) (*packWriter, error) {
	id, err := newPackID()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, id+packExt+tmpExt), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create pack: %w", err)
	}
	return &packWriter{dir: dir, id: id, f: f, buf: make([]byte, 0, writeBuf)}, nil
}

func (w *packWriter) size() int64 { return w.flushed + int64(len(w.buf)) }

// append adds one record and returns its offset.
func (w *packWriter) append(h Hash, data []byte) (int64, error) {
	off := w.size()
	if len(w.buf)+len(data) > cap(w.buf) {
		if err := w.flush(); err != nil {
			return 0, err
		}
	}
	w.buf = append(w.buf, data...)
	w.entries = append(w.entries, idxEntry{h: h, off: off, n: uint32(len(data))})
	return off, nil
}

// appendRun copies n bytes at srcOff of src to the end of the pack (in the
// kernel where it can) and records entries for them, whose offsets are
// relative to the start of the run.
func (w *packWriter) appendRun(src *os.File, srcOff, n int64, rel []idxEntry) error {
	if err := w.flush(); err != nil {
		return err
	}
	base := w.flushed
	if err := copyRange(w.f, base, src, srcOff, n); err != nil {
		return fmt.Errorf("write pack: %w", err)
	}
	w.flushed += n
	for _, e := range rel {
		e.off += base
		w.entries = append(w.entries, e)
	}
	return nil
}

func (w *packWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if _, err := w.f.WriteAt(w.buf, w.flushed); err != nil {
		return fmt.Errorf("write pack: %w", err)
	}
	w.flushed += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// readAt reads a record written by this writer.
func (w *packWriter) readAt(p []byte, off int64) error {
	if off >= w.flushed {
		copy(p, w.buf[off-w.flushed:])
		return nil
	}
	_, err := w.f.ReadAt(p, off)
	return err
}

// finish makes the pack durable and visible under its final name; it
// returns the final path.
func (w *packWriter) finish(sync bool) (string, error) {
	if err := w.flush(); err != nil {
		return "", err
	}
	if sync {
		if err := w.f.Sync(); err != nil {
			return "", fmt.Errorf("sync pack: %w", err)
		}
	}
	idxTmp := filepath.Join(w.dir, w.id+idxExt+tmpExt)
	if err := writeFile(idxTmp, encodeIdx(w.entries), sync); err != nil {
		return "", err
	}
	final := filepath.Join(w.dir, w.id+packExt)
	if err := os.Rename(filepath.Join(w.dir, w.id+packExt+tmpExt), final); err != nil {
		return "", fmt.Errorf("commit pack: %w", err)
	}
	if err := os.Rename(idxTmp, filepath.Join(w.dir, w.id+idxExt)); err != nil {
		return "", fmt.Errorf("commit pack index: %w", err)
	}
	_ = w.f.Close()
	w.f = nil
	return final, nil
}

// discard removes whatever the writer left on disk.
func (w *packWriter) discard() {
	if w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
	_ = os.Remove(filepath.Join(w.dir, w.id+packExt+tmpExt))
	_ = os.Remove(filepath.Join(w.dir, w.id+idxExt+tmpExt))
	_ = os.Remove(filepath.Join(w.dir, w.id+idxExt))
	_ = os.Remove(filepath.Join(w.dir, w.id+packExt))
}

// copyRange copies n bytes from src at srcOff to dst at dstOff, with
// copy_file_range where the kernel supports it and pread/pwrite otherwise.
func copyRange(dst *os.File, dstOff int64, src *os.File, srcOff, n int64) error {
	for n > 0 {
		chunk := n
		if chunk > 1<<30 {
			chunk = 1 << 30
		}
		c, err := unix.CopyFileRange(int(src.Fd()), &srcOff, int(dst.Fd()), &dstOff, int(chunk), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyRangeSlow(dst, dstOff, src, srcOff, n)
			}
			return err
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		n -= int64(c)
	}
	return nil
}

func copyRangeSlow(dst *os.File, dstOff int64, src *os.File, srcOff, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(buf)))
		if _, err := src.ReadAt(buf[:c], srcOff); err != nil {
			return err
		}
		if _, err := dst.WriteAt(buf[:c], dstOff); err != nil {
			return err
		}
		srcOff += c
		dstOff += c
		n -= c
	}
	return nil
}

// writeFile writes b to path (created exclusively), fsyncing when sync.
func writeFile(path string, b []byte, sync bool) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Base(path), err)
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return fmt.Errorf("sync %s: %w", filepath.Base(path), err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", filepath.Base(path), err)
	}
	return nil
}

// syncDir fsyncs a directory so renames and creations in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
