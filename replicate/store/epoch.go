package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"time"

	"github.com/zeebo/xxh3"
)

// FileKind says how an ImageFile's content is split into hashes.
type FileKind uint8

const (
	// KindBlob is an image file stored whole, as ChunkSize chunks (the last
	// one shorter).
	KindBlob FileKind = 1
	// KindPages is a CRIU pages-N.img file, stored as PageSize pages (a
	// pages file is always a whole number of pages; a short tail is kept as
	// a short last page).
	KindPages FileKind = 2
	// KindSymlink is a symbolic link in the image directory (CRIU's
	// "parent" link of a pre-dump chain); it has a Target and no hashes.
	KindSymlink FileKind = 3
)

func (k FileKind) unit() int64 {
	if k == KindPages {
		return PageSize
	}
	return ChunkSize
}

// ImageFile is one file of a CRIU image directory.
type ImageFile struct {
	Name   string      // base name inside the image directory
	Kind   FileKind    // how Hashes split the content
	Mode   fs.FileMode // permission bits
	Size   int64       // bytes
	Target string      // link target, KindSymlink only
	Hashes []Hash      // content, in file order
}

// DataSet is a snapshot of an app's declared data paths (see package
// replicate/datafile).
type DataSet struct {
	// Roots are the declared paths, absolute and clean. A restore removes
	// files under a root directory that the snapshot does not list.
	Roots []string
	// Files lists every directory, regular file and symbolic link under the
	// roots (the roots included), sorted by Path.
	Files []DataFile
}

// DataFile is one entry of a DataSet.
type DataFile struct {
	Path    string      // absolute
	Mode    fs.FileMode // type and permission bits (fs.ModeDir, fs.ModeSymlink, or regular)
	Size    int64       // bytes, regular files only
	ModTime time.Time   // modification time, to the nanosecond
	Target  string      // link target, symbolic links only
	Blocks  []Hash      // content as PageSize blocks, regular files only
}

// Epoch is everything a committed epoch consists of apart from the content
// itself: the manifest, the image files and the data-file snapshot, each
// naming its content by Hash.
type Epoch struct {
	Manifest Manifest
	Images   []ImageFile
	Data     *DataSet // nil when the app declares no data paths
}

// ForEachHash calls fn for every content hash the epoch references, in
// order, repeats and zero pages included.
func (e *Epoch) ForEachHash(fn func(Hash)) {
	for i := range e.Images {
		for _, h := range e.Images[i].Hashes {
			fn(h)
		}
	}
	if e.Data != nil {
		for i := range e.Data.Files {
			for _, h := range e.Data.Files[i].Blocks {
				fn(h)
			}
		}
	}
}

// UniqueHashes returns the content hashes the epoch references, each once,
// in order of first reference, without ZeroPageHash. Sender and receiver of
// a wire stream compute the same list from the same Epoch.
func (e *Epoch) UniqueHashes() []Hash {
	seen := make(map[Hash]struct{})
	var out []Hash
	zero := ZeroPageHash()
	e.ForEachHash(func(h Hash) {
		if h == zero {
			return
		}
		if _, ok := seen[h]; ok {
			return
		}
		seen[h] = struct{}{}
		out = append(out, h)
	})
	return out
}

// Limits that keep a hostile or corrupt encoding from allocating without
// bound.
const (
	maxNameLen  = 4096
	maxManifest = 1 << 20
)

var epochMagic = [8]byte{'D', 'P', 'L', 'E', 'P', 'O', 'C', '1'}

// Digest identifies the epoch's exact description (manifest, image files,
// data set). Two stores hold the same epoch when their copies' digests
// agree; two epochs of one number made by different OPs (a deposed OP
// checkpoints until its lease runs out) do not.
func (e *Epoch) Digest() (Hash, error) {
	b, err := e.MarshalBinary()
	if err != nil {
		return Hash{}, err
	}
	return Sum(b), nil
}

// MarshalBinary encodes the epoch as stored in epoch.bin: a magic, the
// manifest as JSON, the image files, the data set, and an xxh3-64 checksum of
// everything before it.
func (e *Epoch) MarshalBinary() ([]byte, error) {
	mj, err := json.Marshal(&e.Manifest)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	n := 64 + len(mj)
	for i := range e.Images {
		n += 64 + len(e.Images[i].Name) + len(e.Images[i].Target) + 16*len(e.Images[i].Hashes)
	}
	if e.Data != nil {
		for i := range e.Data.Files {
			n += 64 + len(e.Data.Files[i].Path) + len(e.Data.Files[i].Target) + 16*len(e.Data.Files[i].Blocks)
		}
	}
	b := make([]byte, 0, n)
	b = append(b, epochMagic[:]...)
	b = appendBytes(b, mj)
	b = binary.AppendUvarint(b, uint64(len(e.Images)))
	for i := range e.Images {
		f := &e.Images[i]
		b = appendBytes(b, []byte(f.Name))
		b = append(b, byte(f.Kind))
		b = binary.AppendUvarint(b, uint64(f.Mode))
		b = binary.AppendUvarint(b, uint64(f.Size))
		b = appendBytes(b, []byte(f.Target))
		b = appendHashes(b, f.Hashes)
	}
	if e.Data == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(len(e.Data.Roots)))
		for _, r := range e.Data.Roots {
			b = appendBytes(b, []byte(r))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Data.Files)))
		for i := range e.Data.Files {
			f := &e.Data.Files[i]
			b = appendBytes(b, []byte(f.Path))
			b = binary.AppendUvarint(b, uint64(f.Mode))
			b = binary.AppendUvarint(b, uint64(f.Size))
			b = binary.AppendVarint(b, f.ModTime.UnixNano())
			b = appendBytes(b, []byte(f.Target))
			b = appendHashes(b, f.Blocks)
		}
	}
	b = binary.LittleEndian.AppendUint64(b, xxh3.Hash(b))
	return b, nil
}

// UnmarshalBinary decodes the output of MarshalBinary, checking the checksum
// and that every file's hash count matches its size. Errors wrap ErrCorrupt.
func (e *Epoch) UnmarshalBinary(b []byte) error {
	if len(b) < len(epochMagic)+8 || [8]byte(b[:8]) != epochMagic {
		return fmt.Errorf("%w: epoch encoding: bad magic", ErrCorrupt)
	}
	body, sum := b[:len(b)-8], binary.LittleEndian.Uint64(b[len(b)-8:])
	if xxh3.Hash(body) != sum {
		return fmt.Errorf("%w: epoch encoding: checksum mismatch", ErrCorrupt)
	}
	d := decoder{b: body[8:]}
	var out Epoch
	mj := d.bytes(maxManifest)
	if d.err == nil {
		if err := json.Unmarshal(mj, &out.Manifest); err != nil {
			return fmt.Errorf("%w: epoch encoding: manifest: %v", ErrCorrupt, err)
		}
	}
	nImages := d.count(4)
	for i := 0; i < nImages && d.err == nil; i++ {
		f := ImageFile{
			Name: d.str(maxNameLen),
			Kind: FileKind(d.byte()),
			Mode: fs.FileMode(d.uvarint()),
			Size: d.size(),
		}
		f.Target = d.str(maxNameLen)
		f.Hashes = d.hashes()
		if d.err == nil {
			if err := f.validate(); err != nil {
				return err
			}
		}
		out.Images = append(out.Images, f)
	}
	switch d.byte() {
	case 0:
	case 1:
		ds := &DataSet{}
		nRoots := d.count(1)
		for i := 0; i < nRoots && d.err == nil; i++ {
			ds.Roots = append(ds.Roots, d.str(maxNameLen))
		}
		nFiles := d.count(5)
		for i := 0; i < nFiles && d.err == nil; i++ {
			f := DataFile{
				Path: d.str(maxNameLen),
				Mode: fs.FileMode(d.uvarint()),
				Size: d.size(),
			}
			f.ModTime = time.Unix(0, d.varint())
			f.Target = d.str(maxNameLen)
			f.Blocks = d.hashes()
			if d.err == nil {
				if err := f.validate(); err != nil {
					return err
				}
			}
			ds.Files = append(ds.Files, f)
		}
		out.Data = ds
	default:
		d.fail("bad data-set marker")
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return d.err
	}
	*e = out
	return nil
}

func (f *ImageFile) validate() error {
	switch f.Kind {
	case KindBlob, KindPages:
		if want := chunks(f.Size, f.Kind.unit()); int64(len(f.Hashes)) != want {
			return fmt.Errorf("%w: image file %q: %d hashes for %d bytes", ErrCorrupt, f.Name, len(f.Hashes), f.Size)
		}
	case KindSymlink:
		if len(f.Hashes) != 0 {
			return fmt.Errorf("%w: image symlink %q has content", ErrCorrupt, f.Name)
		}
	default:
		return fmt.Errorf("%w: image file %q: unknown kind %d", ErrCorrupt, f.Name, f.Kind)
	}
	if !validImageName(f.Name) {
		return fmt.Errorf("%w: image file name %q", ErrCorrupt, f.Name)
	}
	return nil
}

func (f *DataFile) validate() error {
	want := int64(0)
	if f.Mode.IsRegular() {
		want = chunks(f.Size, PageSize)
	}
	if int64(len(f.Blocks)) != want {
		return fmt.Errorf("%w: data file %q: %d blocks for %d bytes", ErrCorrupt, f.Path, len(f.Blocks), f.Size)
	}
	return nil
}

// chunks returns how many units of size unit hold size bytes.
func chunks(size, unit int64) int64 {
	if size <= 0 {
		return 0
	}
	return (size + unit - 1) / unit
}

func validImageName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return false
		}
	}
	return true
}

func appendBytes(b, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendHashes(b []byte, hs []Hash) []byte {
	b = binary.AppendUvarint(b, uint64(len(hs)))
	for i := range hs {
		b = append(b, hs[i][:]...)
	}
	return b
}

// decoder reads the epoch encoding; the first error sticks and later reads
// return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: epoch encoding: %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
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

func (d *decoder) varint() int64 {
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

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// size reads a non-negative int64.
func (d *decoder) size() int64 {
	v := d.uvarint()
	if v > 1<<62 {
		d.fail("size out of range")
		return 0
	}
	return int64(v)
}

// count reads an element count, each element taking at least minBytes, and
// fails if the rest of the input cannot hold that many.
func (d *decoder) count(minBytes int) int {
	v := d.uvarint()
	if d.err == nil && v > uint64(len(d.b)/minBytes) {
		d.fail("count exceeds input")
		return 0
	}
	return int(v)
}

func (d *decoder) bytes(max int) []byte {
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

func (d *decoder) str(max int) string { return string(d.bytes(max)) }

func (d *decoder) hashes() []Hash {
	n := d.count(16)
	if d.err != nil || n == 0 {
		return nil
	}
	hs := make([]Hash, n)
	for i := range hs {
		copy(hs[i][:], d.b[16*i:])
	}
	d.b = d.b[16*n:]
	return hs
}

// Validate checks that every file's hash count matches its size and kind
// and that image names are plain file names. Errors wrap ErrCorrupt.
func (e *Epoch) Validate() error {
	for i := range e.Images {
		if err := e.Images[i].validate(); err != nil {
			return err
		}
	}
	if e.Data != nil {
		for i := range e.Data.Files {
			if err := e.Data.Files[i].validate(); err != nil {
				return err
			}
		}
	}
	return nil
}
