package store

import (
	"encoding/hex"
	"fmt"

	"github.com/zeebo/xxh3"
)

// PageSize is the unit in which page images and data files are split: every
// page of a CRIU pages-N.img and every block of a data file is hashed and
// stored as one record of at most PageSize bytes.
const PageSize = 4096

// ChunkSize is the unit in which whole image files (every CRIU image file
// that is not a pages-N.img) are split. A file whose bytes did not change
// between two epochs references the same chunks and costs nothing to store or
// send again.
const ChunkSize = 1 << 20

// Hash identifies stored content: the 128-bit xxh3 hash of the bytes, big
// endian. It is a content address and a checksum, not a cryptographic digest:
// the peer streams that carry content run over authenticated TLS.
type Hash [16]byte

// Sum returns the Hash of b.
func Sum(b []byte) Hash {
	return Hash(xxh3.Hash128(b).Bytes())
}

// ZeroPageHash returns the Hash of PageSize zero bytes. Content with this hash
// is never written to a pack: every Store reports it present and returns
// zeroes for it.
func ZeroPageHash() Hash {
	// Sum(make([]byte, PageSize)); checked by TestZeroPageHash.
	return Hash{0x3e, 0xe8, 0xdc, 0x4f, 0x9e, 0x7e, 0xe4, 0x95, 0x93, 0xd7, 0x6f, 0xe1, 0x48, 0xc6, 0x89, 0xba}
}

// IsZeroPage reports whether h is ZeroPageHash.
func (h Hash) IsZeroPage() bool { return h == ZeroPageHash() }

// String returns h as 32 lowercase hex digits.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash parses the output of Hash.String.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 2*len(h) {
		return h, fmt.Errorf("parse hash %q: want %d hex digits", s, 2*len(h))
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("parse hash %q: %w", s, err)
	}
	return h, nil
}

// isZero reports whether every byte of b is zero.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
