// Package peer is how doppel nodes trust and talk to each other: the cluster
// key, the TLS 1.3 configuration whose only trust anchor is that key, and the
// Transport that carries JSON RPCs and raw named streams between nodes over
// one TLS listener per node.
//
// Everything secret derives from the 32-byte cluster Key with HKDF-SHA256
// (RFC 5869) and a distinct info string per use, so one file created by
// `doppel init` is all a node needs to join.
package peer

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the length of a cluster key in bytes.
const KeySize = 32

// HKDF info strings; each derived secret has its own.
const (
	infoGossip = "doppel gossip v1"
	infoTLS    = "doppel tls v1"
)

// Key is the cluster key: 32 random bytes shared by every node of a cluster.
// String and LogValue print only its fingerprint, never the secret.
type Key [KeySize]byte

// Errors of key handling; the returned errors wrap them.
var (
	// ErrNoKey: the key file does not exist.
	ErrNoKey = errors.New("no cluster key")
	// ErrBadKey: the key file exists but does not hold a valid key.
	ErrBadKey = errors.New("bad cluster key")
	// ErrKeyExists: Save would overwrite an existing key file.
	ErrKeyExists = errors.New("cluster key file exists")
)

// NewKey returns a fresh random key.
func NewKey() (Key, error) {
	var k Key
	if _, err := io.ReadFull(rand.Reader, k[:]); err != nil {
		return Key{}, fmt.Errorf("peer: generate cluster key: %w", err)
	}
	return k, nil
}

// maxKeyFile bounds what LoadKey reads: a key file is 45 bytes of base64.
const maxKeyFile = 1024

// LoadKey reads a key file written by Save: the key in standard base64,
// surrounding white space ignored. A missing file is an error wrapping
// ErrNoKey (and fs.ErrNotExist) that says to run `doppel init`; a file that is
// not a regular file, not base64, not 32 bytes or all zero is an error
// wrapping ErrBadKey. A file readable or writable by group or others is
// accepted with a warning on log (nil: slog.Default()) that says how to fix it.
func LoadKey(path string, log *slog.Logger) (Key, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Key{}, fmt.Errorf("%w: %s does not exist (create one with: doppel init, and copy it to every node): %w", ErrNoKey, path, err)
	}
	if err != nil {
		return Key{}, fmt.Errorf("peer: open cluster key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Key{}, fmt.Errorf("peer: stat cluster key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return Key{}, fmt.Errorf("%w: %s is not a regular file", ErrBadKey, path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		if log == nil {
			log = slog.Default()
		}
		log.Warn("cluster key file is accessible by group or others; fix with: chmod 600 "+path,
			"path", path, "mode", fmt.Sprintf("%04o", st.Mode().Perm()))
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return Key{}, fmt.Errorf("peer: read cluster key %s: %w", path, err)
	}
	if len(raw) > maxKeyFile {
		return Key{}, fmt.Errorf("%w: %s is larger than %d bytes, not a key file", ErrBadKey, path, maxKeyFile)
	}
	return ParseKey(string(raw))
}

// ParseKey decodes the base64 text of a key (as written by Save and printed
// by Encode), ignoring surrounding white space.
func ParseKey(text string) (Key, error) {
	s := strings.TrimSpace(text)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		if b2, err2 := base64.RawStdEncoding.DecodeString(s); err2 == nil {
			b, err = b2, nil
		}
	}
	if err != nil {
		return Key{}, fmt.Errorf("%w: not base64: %w", ErrBadKey, err)
	}
	if len(b) != KeySize {
		return Key{}, fmt.Errorf("%w: %d bytes, want %d", ErrBadKey, len(b), KeySize)
	}
	var k Key
	copy(k[:], b)
	if k.IsZero() {
		return Key{}, fmt.Errorf("%w: all zero", ErrBadKey)
	}
	return k, nil
}

// Encode returns the key as standard base64, the format of key files.
func (k Key) Encode() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is the zero key, which is never a valid cluster
// key (it is what an unset Config field holds).
func (k Key) IsZero() bool { return k == Key{} }

// Save writes the key to path atomically (temporary file, fsync, rename or
// link, fsync of the directory) with mode 0600, creating the parent directory
// with mode 0700 if needed. An existing file is replaced only when overwrite
// is true; otherwise the error wraps ErrKeyExists and the file is untouched.
func (k Key) Save(path string, overwrite bool) error {
	if k.IsZero() {
		return fmt.Errorf("%w: refusing to save the zero key", ErrBadKey)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("peer: save cluster key: %w", err)
	}
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: %s (remove it first to replace the key)", ErrKeyExists, path)
		}
	}
	tmp, err := os.CreateTemp(dir, ".doppel-key-*")
	if err != nil {
		return fmt.Errorf("peer: save cluster key: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("peer: save cluster key: %w", err)
	}
	if _, err := tmp.WriteString(k.Encode() + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("peer: save cluster key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("peer: save cluster key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("peer: save cluster key: %w", err)
	}
	if overwrite {
		err = os.Rename(tmpName, path)
	} else {
		// link fails if path appeared meanwhile: no overwrite, ever.
		err = os.Link(tmpName, path)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s (remove it first to replace the key)", ErrKeyExists, path)
		}
	}
	if err != nil {
		return fmt.Errorf("peer: save cluster key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		syncErr := d.Sync()
		d.Close()
		if syncErr != nil {
			return fmt.Errorf("peer: save cluster key: sync %s: %w", dir, syncErr)
		}
	}
	return nil
}

// derive returns n bytes derived from the key for one purpose.
func (k Key) derive(info string, n int) []byte {
	b, err := hkdf.Key(sha256.New, k[:], nil, info, n)
	if err != nil {
		// Only possible for n > 255*32 or in FIPS-only mode with a short
		// key; neither applies to the fixed sizes used here.
		return make([]byte, n)
	}
	return b
}

// GossipKey is the 32-byte AES-256 key for memberlist's SecretKey
// (HKDF info "doppel gossip v1").
func (k Key) GossipKey() []byte { return k.derive(infoGossip, 32) }

// Fingerprint is a short public identifier of the key (hex of the first 8
// bytes of SHA-256 of its TLS public key): safe to log and show, equal on
// every node of one cluster.
func (k Key) Fingerprint() string {
	id := k.identity()
	sum := sha256.Sum256(id.pub)
	return hex.EncodeToString(sum[:8])
}

// String prints the fingerprint, never the secret.
func (k Key) String() string { return "cluster-key:" + k.Fingerprint() }

// GoString prints the fingerprint, never the secret.
func (k Key) GoString() string { return k.String() }

// LogValue makes slog print the fingerprint, never the secret.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }
