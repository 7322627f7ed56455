// Package storetest builds synthetic CRIU image directories and process
// memory for tests and benchmarks of the replication packages. The images
// are real CRIU formats where the store interprets them (pagemap-*.img
// encoded with go-criu's generated types, raw pages-*.img); other image files
// are opaque bytes, as the store treats them.
package storetest

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/magic"
	"google.golang.org/protobuf/proto"
)

// PageSize is the page size of the synthetic images.
const PageSize = 4096

// Pagemap entry flags (CRIU's criu/include/pagemap.h).
const (
	PEParent  = 1 << 0
	PELazy    = 1 << 1
	PEPresent = 1 << 2
)

// Memory returns n pages of synthetic process memory, deterministic for a
// seed: about 10% zero pages, 30% random (incompressible) pages and 60%
// pages of small integers and pointers into one region, like a heap. LZ4
// compresses the mix to about 57%.
func Memory(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x6d656d))
	b := make([]byte, n*PageSize)
	for p := 0; p < n; p++ {
		fillPage(r, b[p*PageSize:(p+1)*PageSize])
	}
	return b
}

func fillPage(r *rand.Rand, pg []byte) {
	switch x := r.IntN(10); {
	case x == 0:
		clear(pg)
	case x < 4:
		for i := 0; i < len(pg); i += 8 {
			binary.LittleEndian.PutUint64(pg[i:], r.Uint64())
		}
	default:
		base := r.Uint64() & 0x7fffffff0000
		for i := 0; i < len(pg); i += 8 {
			v := uint64(r.IntN(64))
			if r.IntN(4) == 0 {
				v = base + uint64(r.IntN(4096))*16
			}
			binary.LittleEndian.PutUint64(pg[i:], v)
		}
	}
}

// Dirty rewrites about fraction of the pages of mem in place with new
// non-zero content (random pages, each different from before) and returns
// the indexes of the pages it rewrote.
func Dirty(mem []byte, fraction float64, seed uint64) []int {
	r := rand.New(rand.NewPCG(seed, 0x6469727479))
	n := len(mem) / PageSize
	want := int(float64(n)*fraction + 0.5)
	perm := r.Perm(n)[:want]
	for _, p := range perm {
		pg := mem[p*PageSize : (p+1)*PageSize]
		for i := 0; i < PageSize; i += 8 {
			binary.LittleEndian.PutUint64(pg[i:], r.Uint64()|1)
		}
	}
	return perm
}

// Region is a run of virtual pages of a process.
type Region struct {
	Vaddr uint64 // page aligned
	Pages int    // number of pages
	Flags uint32 // pagemap flags; 0 means PEPresent
	// Data holds Pages*PageSize bytes for a present region; nil for others.
	Data []byte
}

// Proc is one process of a synthetic image directory.
type Proc struct {
	PID     uint32
	PagesID uint32 // N of pages-N.img; 0 means PID
	Regions []Region
}

// Image is a synthetic CRIU image directory.
type Image struct {
	Procs []Proc
	// Files are other image files (core-*.img, fdinfo-*.img, ...) by name.
	Files map[string][]byte
	// Links are symbolic links by name and target.
	Links map[string]string
}

// Write creates the image directory dir (which must not hold files of the
// same names) with pagemap-PID.img and pages-ID.img for each process plus
// Files and Links.
func (im *Image) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, p := range im.Procs {
		id := p.PagesID
		if id == 0 {
			id = p.PID
		}
		pm, err := EncodePagemap(id, p.Regions)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", p.PID)), pm, 0o600); err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("pages-%d.img", id)), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		for _, r := range p.Regions {
			if r.flags()&PEPresent == 0 {
				continue
			}
			if len(r.Data) != r.Pages*PageSize {
				_ = f.Close()
				return fmt.Errorf("region %#x: %d bytes for %d pages", r.Vaddr, len(r.Data), r.Pages)
			}
			if _, err := f.Write(r.Data); err != nil {
				_ = f.Close()
				return err
			}
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	for name, b := range im.Files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	for name, target := range im.Links {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

func (r Region) flags() uint32 {
	if r.Flags == 0 {
		return PEPresent
	}
	return r.Flags
}

// EncodePagemap encodes a CRIU pagemap image for the regions.
func EncodePagemap(pagesID uint32, regions []Region) ([]byte, error) {
	mm := magic.LoadMagic()
	b := binary.LittleEndian.AppendUint32(nil, uint32(mm.ByName["IMG_COMMON"]))
	b = binary.LittleEndian.AppendUint32(b, uint32(mm.ByName["PAGEMAP"]))
	add := func(m proto.Message) error {
		pb, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(pb)))
		b = append(b, pb...)
		return nil
	}
	if err := add(&pagemap.PagemapHead{PagesId: proto.Uint32(pagesID)}); err != nil {
		return nil, err
	}
	for _, r := range regions {
		e := &pagemap.PagemapEntry{Vaddr: proto.Uint64(r.Vaddr), CompatNrPages: proto.Uint32(0), NrPages: proto.Uint64(uint64(r.Pages)), Flags: proto.Uint32(r.flags())}
		if err := add(e); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// SimpleImage returns an image of one process (PID 1) whose memory is mem
// laid out as regions of at most 512 pages with a one-page gap between
// them, plus a few small opaque image files.
func SimpleImage(mem []byte) *Image {
	var regions []Region
	va := uint64(0x7f0000000000)
	for off := 0; off < len(mem); off += 512 * PageSize {
		end := min(off+512*PageSize, len(mem))
		regions = append(regions, Region{Vaddr: va, Pages: (end - off) / PageSize, Data: mem[off:end]})
		va += uint64(end-off) + PageSize
	}
	return &Image{
		Procs: []Proc{{PID: 1, Regions: regions}},
		Files: map[string][]byte{
			"inventory.img": []byte("synthetic inventory"),
			"core-1.img":    []byte("synthetic core of pid 1"),
			"mm-1.img":      []byte("synthetic mm of pid 1"),
			"pstree.img":    []byte("synthetic pstree"),
		},
	}
}
