package bench

import (
	"encoding/binary"
	"math/rand/v2"
)

// PageSize is the unit the synthetic memory is built of, the store's page.
const PageSize = 4096

// Fill writes page-like content into b, deterministic for a seed: about 10%
// zero pages, 30% random (incompressible) pages and 60% pages of small
// integers and pointers into one region, like a heap (the mix of the
// store's and the wire's benchmarks, package storetest). LZ4 compresses it
// to a little over half. A partial page at the end is left as it is.
func Fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x6d656d))
	for off := 0; off+PageSize <= len(b); off += PageSize {
		fillPage(r, b[off:off+PageSize])
	}
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

// Dirty rewrites k distinct pages of b, spread evenly over it, with content
// that depends on seed (a page-like mix, never a zero page), so that every
// call with a new seed changes exactly those pages. It returns how many
// pages it rewrote: min(k, pages in b).
func Dirty(b []byte, k int, seed uint64) int {
	pages := len(b) / PageSize
	k = min(max(k, 0), pages)
	if k == 0 {
		return 0
	}
	r := rand.New(rand.NewPCG(seed, 0x6469727479))
	start := r.IntN(pages)
	for i := 0; i < k; i++ {
		p := (start + int(int64(i)*int64(pages)/int64(k))) % pages
		pg := b[p*PageSize : (p+1)*PageSize]
		for j := 0; j < PageSize; j += 8 {
			v := r.Uint64()
			if j >= PageSize/2 {
				v &= 0xffff // half compressible
			}
			binary.LittleEndian.PutUint64(pg[j:], v|1)
		}
	}
	return k
}
