package wire

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"time"

	"doppel/replicate/store"
)

// The epoch description travels in one of two encodings:
//
//   - full: store.Epoch.MarshalBinary, as stored in epoch.bin;
//   - delta: the same fields, but each file's hash list expressed as copy
//     operations from the parent epoch's file of the same name (image
//     files) or path (data files) plus literal hashes. A clone that holds
//     the parent is sent this one: for an epoch where 1% of the pages
//     changed it is about 1% of the full size.
//
// Delta encoding: magic "DPLDELT1"; manifest JSON (uvarint length + bytes);
// uvarint image count, each: name, kind byte, mode, size, target, ops; data
// marker byte (0/1); if 1: uvarint root count + roots, uvarint file count,
// each: path, mode, size, mtime (varint ns), target, ops. Strings are
// uvarint length + bytes. Ops: uvarint count, then per op a uvarint tag
// whose low bit is 1 for a literal (tag>>1 hashes of 16 bytes follow) and 0
// for a copy (a zigzag varint moves the parent cursor, then tag>>1 hashes
// are copied from it and the cursor advances past them).

const (
	encFull  = 0
	encDelta = 1
)

var deltaMagic = [8]byte{'D', 'P', 'L', 'D', 'E', 'L', 'T', '1'}

const maxName = 4096

// encodeDelta encodes ep against parent.
func encodeDelta(ep, parent *store.Epoch) ([]byte, error) {
	mj, err := json.Marshal(&ep.Manifest)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	b := append([]byte(nil), deltaMagic[:]...)
	b = appendString(b, string(mj))
	pimg := map[string][]store.Hash{}
	for i := range parent.Images {
		pimg[parent.Images[i].Name] = parent.Images[i].Hashes
	}
	b = binary.AppendUvarint(b, uint64(len(ep.Images)))
	for i := range ep.Images {
		f := &ep.Images[i]
		b = appendString(b, f.Name)
		b = append(b, byte(f.Kind))
		b = binary.AppendUvarint(b, uint64(f.Mode))
		b = binary.AppendUvarint(b, uint64(f.Size))
		b = appendString(b, f.Target)
		b = appendOps(b, f.Hashes, pimg[f.Name])
	}
	if ep.Data == nil {
		return append(b, 0), nil
	}
	b = append(b, 1)
	pdata := map[string][]store.Hash{}
	if parent.Data != nil {
		for i := range parent.Data.Files {
			pdata[parent.Data.Files[i].Path] = parent.Data.Files[i].Blocks
		}
	}
	b = binary.AppendUvarint(b, uint64(len(ep.Data.Roots)))
	for _, r := range ep.Data.Roots {
		b = appendString(b, r)
	}
	b = binary.AppendUvarint(b, uint64(len(ep.Data.Files)))
	for i := range ep.Data.Files {
		f := &ep.Data.Files[i]
		b = appendString(b, f.Path)
		b = binary.AppendUvarint(b, uint64(f.Mode))
		b = binary.AppendUvarint(b, uint64(f.Size))
		b = binary.AppendVarint(b, f.ModTime.UnixNano())
		b = appendString(b, f.Target)
		b = appendOps(b, f.Blocks, pdata[f.Path])
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendOps encodes cur as copies from base and literals. It prefers to
// continue copying where the previous copy ended, and otherwise jumps to the
// first position in base holding the hash.
func appendOps(b []byte, cur, base []store.Hash) []byte {
	type op struct {
		copy  bool
		n     int
		delta int64 // copy: cursor move before copying
		from  int   // literal: index in cur
	}
	var ops []op
	var first map[store.Hash]int
	if len(base) > 0 {
		first = make(map[store.Hash]int, len(base))
		for i := len(base) - 1; i >= 0; i-- {
			first[base[i]] = i
		}
	}
	cursor := 0
	for j := 0; j < len(cur); {
		start := -1
		if cursor < len(base) && base[cursor] == cur[j] {
			start = cursor
		} else if i, ok := first[cur[j]]; ok {
			start = i
		}
		if start < 0 {
			if len(ops) > 0 && !ops[len(ops)-1].copy {
				ops[len(ops)-1].n++
			} else {
				ops = append(ops, op{n: 1, from: j})
			}
			j++
			continue
		}
		n := 0
		for start+n < len(base) && j+n < len(cur) && base[start+n] == cur[j+n] {
			n++
		}
		ops = append(ops, op{copy: true, n: n, delta: int64(start - cursor)})
		cursor = start + n
		j += n
	}
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for _, o := range ops {
		if o.copy {
			b = binary.AppendUvarint(b, uint64(o.n)<<1)
			b = binary.AppendVarint(b, o.delta)
			continue
		}
		b = binary.AppendUvarint(b, uint64(o.n)<<1|1)
		for _, h := range cur[o.from : o.from+o.n] {
			b = append(b, h[:]...)
		}
	}
	return b
}

// decodeDelta decodes an encodeDelta output against parent, with every
// length and count checked against the input before anything is allocated.
func decodeDelta(b []byte, parent *store.Epoch, maxHashes int64) (*store.Epoch, error) {
	if len(b) < 8 || [8]byte(b[:8]) != deltaMagic {
		return nil, fmt.Errorf("%w: delta description: bad magic", ErrProtocol)
	}
	d := &dec{b: b[8:], budget: maxHashes}
	ep := &store.Epoch{}
	mj := d.bytes(1 << 20)
	if d.err == nil {
		if err := json.Unmarshal(mj, &ep.Manifest); err != nil {
			return nil, fmt.Errorf("%w: delta description: manifest: %v", ErrProtocol, err)
		}
	}
	pimg := map[string][]store.Hash{}
	for i := range parent.Images {
		pimg[parent.Images[i].Name] = parent.Images[i].Hashes
	}
	n := d.count(5)
	for i := 0; i < n && d.err == nil; i++ {
		f := store.ImageFile{Name: d.str()}
		f.Kind = store.FileKind(d.byte())
		f.Mode = fs.FileMode(d.uvarint())
		f.Size = d.size()
		f.Target = d.str()
		want := int64(0)
		switch f.Kind {
		case store.KindPages:
			want = chunks(f.Size, store.PageSize)
		case store.KindBlob:
			want = chunks(f.Size, store.ChunkSize)
		}
		f.Hashes = d.ops(pimg[f.Name], want)
		ep.Images = append(ep.Images, f)
	}
	switch d.byte() {
	case 0:
	case 1:
		pdata := map[string][]store.Hash{}
		if parent.Data != nil {
			for i := range parent.Data.Files {
				pdata[parent.Data.Files[i].Path] = parent.Data.Files[i].Blocks
			}
		}
		ds := &store.DataSet{}
		nr := d.count(1)
		for i := 0; i < nr && d.err == nil; i++ {
			ds.Roots = append(ds.Roots, d.str())
		}
		nf := d.count(6)
		for i := 0; i < nf && d.err == nil; i++ {
			f := store.DataFile{Path: d.str()}
			f.Mode = fs.FileMode(d.uvarint())
			f.Size = d.size()
			f.ModTime = time.Unix(0, d.varint())
			f.Target = d.str()
			want := int64(0)
			if f.Mode.IsRegular() {
				want = chunks(f.Size, store.PageSize)
			}
			f.Blocks = d.ops(pdata[f.Path], want)
			ds.Files = append(ds.Files, f)
		}
		ep.Data = ds
	default:
		d.fail("bad data-set marker")
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	if err := ep.Validate(); err != nil {
		return nil, fmt.Errorf("%w: delta description: %v", ErrProtocol, err)
	}
	return ep, nil
}

// dec reads the delta encoding; the first error sticks.
type dec struct {
	b      []byte
	err    error
	budget int64 // hashes the description may still hold
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: delta description: %s", ErrProtocol, what)
	}
	d.b = nil
}

func (d *dec) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *dec) size() int64 {
	v := d.uvarint()
	if v > 1<<62 {
		d.fail("size out of range")
		return 0
	}
	return int64(v)
}

func (d *dec) count(minBytes int) int {
	v := d.uvarint()
	if d.err == nil && v > uint64(len(d.b)/minBytes) {
		d.fail("count exceeds input")
		return 0
	}
	return int(v)
}

func (d *dec) bytes(max int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(d.b)) {
		d.fail("length out of range")
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func (d *dec) str() string { return string(d.bytes(maxName)) }

// ops decodes a hash list of want hashes against base. want is checked
// against the description's budget before anything is allocated, and every
// op against want.
func (d *dec) ops(base []store.Hash, want int64) []store.Hash {
	n := d.count(1)
	if d.err != nil {
		return nil
	}
	if want > d.budget {
		d.fail("more hashes than allowed")
		return nil
	}
	d.budget -= want
	out := make([]store.Hash, 0, want)
	cursor := 0
	for i := 0; i < n && d.err == nil; i++ {
		tag := d.uvarint()
		cnt := tag >> 1
		if tag&1 == 1 {
			if cnt > uint64(len(d.b)/16) || cnt > uint64(want)-uint64(len(out)) {
				d.fail("literal exceeds input or file size")
				return nil
			}
			for k := uint64(0); k < cnt; k++ {
				out = append(out, store.Hash(d.b[16*k:16*k+16]))
			}
			d.b = d.b[16*cnt:]
			continue
		}
		delta := d.varint()
		start := int64(cursor) + delta
		if d.err != nil || start < 0 || start > int64(len(base)) || cnt > uint64(int64(len(base))-start) || cnt > uint64(want)-uint64(len(out)) {
			d.fail("copy outside the parent's list or beyond the file size")
			return nil
		}
		out = append(out, base[start:start+int64(cnt)]...)
		cursor = int(start) + int(cnt)
	}
	return out
}

// Small message payloads.

type hello struct {
	app           string
	epoch, parent uint64
	// digest identifies the epoch, parentDigest the sender's parent (zero
	// when it has none to offer): a receiver holding another epoch under
	// either number (made by another OP) must not take it for the
	// sender's.
	digest, parentDigest store.Hash
	// term is the epoch's cluster term (store.Manifest.ClusterTerm).
	term uint64
}

func (h hello) encode() []byte {
	b := binary.AppendUvarint(nil, h.epoch)
	b = binary.AppendUvarint(b, h.parent)
	b = appendString(b, h.app)
	b = append(b, h.digest[:]...)
	b = append(b, h.parentDigest[:]...)
	return binary.AppendUvarint(b, h.term)
}

func decodeHello(p []byte) (hello, error) {
	d := &dec{b: p}
	h := hello{epoch: d.uvarint(), parent: d.uvarint()}
	h.app = string(d.bytes(256))
	if d.err == nil && len(d.b) < 2*len(h.digest) {
		d.fail("no digests")
	}
	if d.err == nil {
		copy(h.digest[:], d.b)
		copy(h.parentDigest[:], d.b[len(h.digest):])
		d.b = d.b[2*len(h.digest):]
		h.term = d.uvarint()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return h, fmt.Errorf("hello: %w", d.err)
	}
	if !store.ValidApp(h.app) || h.epoch == 0 || h.parent >= h.epoch {
		return h, fmt.Errorf("%w: hello: app %q epoch %d parent %d", ErrProtocol, h.app, h.epoch, h.parent)
	}
	return h, nil
}

// uvarints encodes a fixed list of numbers; decodeUvarints reads exactly n.
func uvarints(vs ...uint64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

func decodeUvarints(what string, p []byte, n int) ([]uint64, error) {
	d := &dec{b: p}
	out := make([]uint64, n)
	for i := range out {
		out[i] = d.uvarint()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, fmt.Errorf("%s: %w", what, d.err)
	}
	return out, nil
}

func chunks(size, unit int64) int64 {
	if size <= 0 {
		return 0
	}
	return (size + unit - 1) / unit
}
