package store

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/magic"
	"google.golang.org/protobuf/proto"
)

// Pagemap entry flags, as CRIU's criu/include/pagemap.h defines them.
const (
	pePARENT  = 1 << 0 // data is in the parent image directory
	peLAZY    = 1 << 1 // data is served later by lazy-pages
	pePRESENT = 1 << 2 // data is in this image's pages-N.img
)

// pagemapFile is a decoded pagemap-*.img: which pages file holds the data
// and which virtual pages it covers.
type pagemapFile struct {
	key     string // "123" for pagemap-123.img, "shmem-456" for pagemap-shmem-456.img
	pagesID uint32
	entries []pagemapEntry
}

type pagemapEntry struct {
	vaddr uint64
	pages uint64
	flags uint32
}

// pagemapKey returns the part of a pagemap image name that identifies the
// address space, and whether name is a pagemap image.
func pagemapKey(name string) (string, bool) {
	if !strings.HasPrefix(name, "pagemap-") || !strings.HasSuffix(name, ".img") {
		return "", false
	}
	k := strings.TrimSuffix(strings.TrimPrefix(name, "pagemap-"), ".img")
	return k, k != ""
}

// pagesID returns N for a pages-N.img name.
func pagesID(name string) (uint32, bool) {
	if !strings.HasPrefix(name, "pages-") || !strings.HasSuffix(name, ".img") {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "pages-"), ".img"), 10, 32)
	return uint32(n), err == nil
}

// decodePagemap decodes a CRIU pagemap image (magic, then a PagemapHead and
// PagemapEntry messages, each preceded by its 32-bit little-endian size)
// with go-criu's generated types.
func decodePagemap(key string, b []byte) (*pagemapFile, error) {
	mm := magic.LoadMagic()
	if len(b) < 8 || uint64(binary.LittleEndian.Uint32(b)) != mm.ByName["IMG_COMMON"] ||
		uint64(binary.LittleEndian.Uint32(b[4:])) != mm.ByName["PAGEMAP"] {
		return nil, fmt.Errorf("%w: pagemap-%s.img: bad magic", ErrBadImage, key)
	}
	b = b[8:]
	next := func() ([]byte, error) {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: pagemap-%s.img: truncated entry size", ErrBadImage, key)
		}
		n := binary.LittleEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			return nil, fmt.Errorf("%w: pagemap-%s.img: truncated entry", ErrBadImage, key)
		}
		msg := b[4 : 4+n]
		b = b[4+n:]
		return msg, nil
	}
	msg, err := next()
	if err != nil {
		return nil, err
	}
	var head pagemap.PagemapHead
	if err := proto.Unmarshal(msg, &head); err != nil {
		return nil, fmt.Errorf("%w: pagemap-%s.img: head: %v", ErrBadImage, key, err)
	}
	pf := &pagemapFile{key: key, pagesID: head.GetPagesId()}
	for len(b) > 0 {
		msg, err := next()
		if err != nil {
			return nil, err
		}
		var e pagemap.PagemapEntry
		if err := proto.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("%w: pagemap-%s.img: entry %d: %v", ErrBadImage, key, len(pf.entries), err)
		}
		flags := e.GetFlags()
		if e.Flags == nil { // images older than the flags field
			flags = pePRESENT
			if e.GetInParent() {
				flags = pePARENT
			}
		}
		n := e.GetNrPages()
		if e.NrPages == nil {
			n = uint64(e.GetCompatNrPages())
		}
		if n > 1<<40 {
			return nil, fmt.Errorf("%w: pagemap-%s.img: entry %d: %d pages", ErrBadImage, key, len(pf.entries), n)
		}
		pf.entries = append(pf.entries, pagemapEntry{vaddr: e.GetVaddr(), pages: n, flags: flags})
	}
	return pf, nil
}

// presentPages returns how many pages the entries put in the pages file.
func (pf *pagemapFile) presentPages() uint64 {
	var n uint64
	for _, e := range pf.entries {
		if e.flags&pePRESENT != 0 {
			n += e.pages
		}
	}
	return n
}

// forEachPresent calls fn with the virtual address of each page in the
// pages file, in file order.
func (pf *pagemapFile) forEachPresent(fn func(i int, vaddr uint64)) {
	i := 0
	for _, e := range pf.entries {
		if e.flags&pePRESENT == 0 {
			continue
		}
		for k := uint64(0); k < e.pages; k++ {
			fn(i, e.vaddr+k*PageSize)
			i++
		}
	}
}
