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
	"unsafe"

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
//
// Records collect in a page-aligned buffer that is written with O_DIRECT
// when it fills: on the machines this project targets, buffered writes plus
// the fsync at commit cost several times what direct writes of the same
// bytes do. Before a direct write the buffer is padded to a whole number of
// pages; the padding is dead space the index never points at. Where the file
// system refuses O_DIRECT the writer falls back to buffered writes.
type packWriter struct {
	dir     string
	id      string
	f       *os.File // read-write, buffered
	df      *os.File // write-only, O_DIRECT; nil when unsupported
	buf     []byte   // records appended but not yet written, starting at flushed
	flushed int64    // bytes written (or being written) to the file
	entries []idxEntry

	// One buffer is written in the background while the other fills.
	spare    []byte
	writing  []byte
	inflight chan writeResult
}

type writeResult struct {
	err    error
	direct bool // false: O_DIRECT was refused and the write went buffered
}

const (
	writeBuf = 8 << 20
	align    = 4096
)

func newPackWriter(dir string) (*packWriter, error) {
	id, err := newPackID()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, id+packExt+tmpExt)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create pack: %w", err)
	}
	w := &packWriter{dir: dir, id: id, f: f, buf: alignedBuf(writeBuf), spare: alignedBuf(writeBuf)}
	if df, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0); err == nil {
		w.df = df
	}
	return w, nil
}

// alignedBuf returns an empty slice of capacity n whose first byte is page
// aligned.
func alignedBuf(n int) []byte {
	b := make([]byte, n+align)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (align - 1))
	if off != 0 {
		off = align - off
	}
	return b[off : off : off+n]
}

func (w *packWriter) size() int64 { return w.flushed + int64(len(w.buf)) }

// reserve makes room for n more bytes in the buffer and returns the offset
// the next record will have.
func (w *packWriter) reserve(n int) (int64, error) {
	if len(w.buf)+n > cap(w.buf) {
		if err := w.startFlush(); err != nil {
			return 0, err
		}
	}
	return w.size(), nil
}

// append adds one record and returns its offset.
func (w *packWriter) append(h Hash, data []byte) (int64, error) {
	off, err := w.reserve(len(data))
	if err != nil {
		return 0, err
	}
	w.buf = append(w.buf, data...)
	w.entries = append(w.entries, idxEntry{h: h, off: off, n: uint32(len(data))})
	return off, nil
}

// appendFrom appends records read from src: rel lists them with offsets
// relative to srcOff, back to back. It returns the records as entered in the
// index.
func (w *packWriter) appendFrom(src *os.File, srcOff int64, rel []idxEntry) ([]idxEntry, error) {
	out := make([]idxEntry, 0, len(rel))
	for i := 0; i < len(rel); {
		if _, err := w.reserve(int(rel[i].n)); err != nil {
			return nil, err
		}
		// As many records as fit, read with one call.
		j, n := i, 0
		for j < len(rel) && len(w.buf)+n+int(rel[j].n) <= cap(w.buf) {
			n += int(rel[j].n)
			j++
		}
		base := w.size()
		dst := w.buf[len(w.buf) : len(w.buf)+n]
		if _, err := src.ReadAt(dst, srcOff+rel[i].off); err != nil {
			return nil, fmt.Errorf("read source: %w", err)
		}
		w.buf = w.buf[:len(w.buf)+n]
		for _, e := range rel[i:j] {
			e.off = base + e.off - rel[i].off
			out = append(out, e)
		}
		i = j
	}
	w.entries = append(w.entries, out...)
	return out, nil
}

// appendRun copies n bytes at srcOff of src to the end of the pack in the
// kernel (copy_file_range) and records entries for them, whose offsets are
// relative to the start of the run. GC uses it to compact packs.
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

// flush writes the buffer and waits for every write to finish.
func (w *packWriter) flush() error {
	if err := w.startFlush(); err != nil {
		return err
	}
	return w.wait()
}

// startFlush hands the buffer to a background write (directly, padded to
// whole pages, when the file offset allows it; buffered otherwise) after
// waiting for the previous one, and continues in the other buffer.
func (w *packWriter) startFlush() error {
	if err := w.wait(); err != nil {
		return err
	}
	if len(w.buf) == 0 {
		return nil
	}
	buf, off := w.buf, w.flushed
	direct := w.df != nil && off%align == 0
	if direct {
		n := len(buf)
		buf = buf[:(n+align-1)&^(align-1)]
		clear(buf[n:])
	}
	w.flushed += int64(len(buf))
	w.writing, w.buf, w.spare = buf, w.spare[:0], nil
	ch := make(chan writeResult, 1)
	w.inflight = ch
	f, df := w.f, w.df
	go func() {
		if direct {
			_, err := df.WriteAt(buf, off)
			if err == nil || !errors.Is(err, unix.EINVAL) {
				ch <- writeResult{err: err, direct: true}
				return
			}
			// The file system refuses direct I/O after all.
		}
		_, err := f.WriteAt(buf, off)
		ch <- writeResult{err: err, direct: false}
	}()
	return nil
}

// wait waits for the background write, if any.
func (w *packWriter) wait() error {
	if w.inflight == nil {
		return nil
	}
	res := <-w.inflight
	w.inflight = nil
	w.spare, w.writing = w.writing[:0], nil
	if !res.direct && w.df != nil {
		_ = w.df.Close()
		w.df = nil
	}
	if res.err != nil {
		return fmt.Errorf("write pack: %w", res.err)
	}
	return nil
}

// readAt reads a record written by this writer.
func (w *packWriter) readAt(p []byte, off int64) error {
	if off >= w.flushed {
		copy(p, w.buf[off-w.flushed:])
		return nil
	}
	if err := w.wait(); err != nil {
		return err
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
	w.close()
	return final, nil
}

func (w *packWriter) close() {
	_ = w.wait()
	if w.df != nil {
		_ = w.df.Close()
		w.df = nil
	}
	if w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
}

// discard removes whatever the writer left on disk.
func (w *packWriter) discard() {
	w.close()
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
