package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
	"github.com/zeebo/xxh3"
)

// Version is the protocol version this package speaks. It changes when the
// meaning of an existing message changes; new message types are appended to
// the MsgType enum without changing it.
const Version uint32 = 2 // 2: the hello carries the epoch's and the parent's digests

// MsgType is the type of a frame. The enum is append-only: a value, once
// used, keeps its meaning forever.
type MsgType uint8

const (
	msgInvalid MsgType = iota
	MsgHello           // S→R: app, epoch, parent
	MsgReady           // R→S: whether the receiver holds the epoch and its parent
	MsgMeta            // S→R: a chunk of the encoded epoch description
	MsgMetaEnd         // S→R: encoding, total length and checksum of the description
	MsgWant            // R→S: a chunk of the bitmap of wanted content
	MsgWantEnd         // R→S: bitmap length and number of wanted records
	MsgPages           // S→R: a batch of memory pages
	MsgBlobs           // S→R: a batch of image-file chunks
	MsgBlocks          // S→R: a batch of data-file blocks
	MsgEnd             // S→R: number of records and bytes sent
	MsgAck             // R→S: the epoch is committed
	MsgError           // either way: the sender of this frame gives up, and why
	msgLimit           // first unused value
)

var msgNames = [...]string{"invalid", "hello", "ready", "meta", "meta-end", "want", "want-end", "pages", "blobs", "blocks", "end", "ack", "error"}

func (t MsgType) String() string {
	if int(t) < len(msgNames) {
		return msgNames[t]
	}
	return fmt.Sprintf("msg(%d)", uint8(t))
}

const (
	headerSize = 24
	// MaxFrame is the largest payload (uncompressed) a frame may carry.
	MaxFrame = 4 << 20
	flagLZ4  = 1 << 0
)

// maxWire is the largest payload a frame may take on the wire.
var maxWire = lz4.CompressBlockBound(MaxFrame)

var magic = [8]byte{'D', 'P', 'L', 'W', 'I', 'R', 'E', 0}

// Errors a caller can branch on. Every error returned by Send and Receive
// wraps one of these or an I/O or store error.
var (
	// ErrProtocol: the peer sent something this protocol does not allow
	// (bad magic, unexpected frame, malformed payload, oversized frame).
	ErrProtocol = errors.New("wire protocol violation")
	// ErrChecksum: a frame failed its checksum (corruption or tampering).
	ErrChecksum = errors.New("wire frame checksum mismatch")
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = errors.New("wire protocol version mismatch")
	// ErrRemote: the peer reported an error and gave up.
	ErrRemote = errors.New("peer reported error")
	// ErrDiverged: the receiver holds epochs another OP made (another
	// epoch of the number sent or of its parent's, or newer ones of an
	// older cluster term) and could not drop them, as one is being read.
	ErrDiverged = errors.New("receiver holds epochs of another OP")
)

// frameWriter writes frames; it is not safe for concurrent use.
type frameWriter struct {
	w     io.Writer
	seq   uint32
	comp  lz4.Compressor
	buf   []byte
	bytes int64 // bytes written, headers included
}

// encodeFrame builds the header and wire payload of a frame into dst
// (compressing with c when that makes it smaller) and returns dst.
func encodeFrame(dst []byte, c *lz4.Compressor, t MsgType, seq uint32, payload []byte, compress bool) ([]byte, error) {
	if len(payload) > MaxFrame {
		return nil, fmt.Errorf("frame %v: %d bytes exceeds %d", t, len(payload), MaxFrame)
	}
	need := headerSize + lz4.CompressBlockBound(len(payload))
	if cap(dst) < need {
		dst = make([]byte, need)
	}
	dst = dst[:need]
	flags := byte(0)
	body := dst[headerSize:]
	n := 0
	if compress && len(payload) > 64 {
		var err error
		n, err = c.CompressBlock(payload, body)
		if err != nil {
			n = 0
		}
	}
	if n > 0 && n < len(payload) {
		flags |= flagLZ4
	} else {
		n = copy(body, payload)
	}
	h := dst[:headerSize]
	h[0], h[1], h[2], h[3] = byte(t), flags, 0, 0
	binary.LittleEndian.PutUint32(h[4:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(h[8:], uint32(n))
	binary.LittleEndian.PutUint32(h[12:], seq)
	dst = dst[:headerSize+n]
	binary.LittleEndian.PutUint64(h[16:], checksum(h[:16], dst[headerSize:]))
	return dst, nil
}

func checksum(head, body []byte) uint64 {
	hs := xxh3.New()
	_, _ = hs.Write(head)
	_, _ = hs.Write(body)
	return hs.Sum64()
}

// write sends one frame, compressed when compress is set and it helps.
func (fw *frameWriter) write(t MsgType, payload []byte, compress bool) error {
	b, err := encodeFrame(fw.buf, &fw.comp, t, fw.seq, payload, compress)
	if err != nil {
		return err
	}
	fw.buf = b[:0]
	return fw.writeEncoded(b)
}

// writeEncoded sends a frame built by encodeFrame with sequence number
// fw.seq.
func (fw *frameWriter) writeEncoded(b []byte) error {
	if _, err := fw.w.Write(b); err != nil {
		return fmt.Errorf("send %v: %w", MsgType(b[0]), err)
	}
	fw.seq++
	fw.bytes += int64(len(b))
	return nil
}

// frameReader reads and verifies frames; it is not safe for concurrent use.
type frameReader struct {
	r     io.Reader
	seq   uint32
	head  [headerSize]byte
	wire  []byte
	raw   []byte
	bytes int64 // bytes read, headers included
}

// frame is a verified, decompressed frame. payload is valid until the next
// read.
type frame struct {
	t       MsgType
	payload []byte
	wireLen int // bytes on the wire, header included
}

// read reads the next frame, checking length bounds before allocating,
// then sequence number and checksum before decompressing.
func (fr *frameReader) read() (frame, error) {
	if _, err := io.ReadFull(fr.r, fr.head[:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return frame{}, fmt.Errorf("read frame header: %w", err)
	}
	h := fr.head[:]
	t, flags := MsgType(h[0]), h[1]
	rawLen := binary.LittleEndian.Uint32(h[4:])
	wireLen := binary.LittleEndian.Uint32(h[8:])
	seq := binary.LittleEndian.Uint32(h[12:])
	sum := binary.LittleEndian.Uint64(h[16:])
	switch {
	case t == msgInvalid || t >= msgLimit:
		return frame{}, fmt.Errorf("%w: unknown frame type %d", ErrProtocol, h[0])
	case flags&^flagLZ4 != 0 || h[2] != 0 || h[3] != 0:
		return frame{}, fmt.Errorf("%w: %v frame: bad flags", ErrProtocol, t)
	case rawLen > MaxFrame || int(wireLen) > maxWire:
		return frame{}, fmt.Errorf("%w: %v frame: length %d/%d exceeds limit", ErrProtocol, t, rawLen, wireLen)
	case flags&flagLZ4 == 0 && wireLen != rawLen:
		return frame{}, fmt.Errorf("%w: %v frame: stored length %d != %d", ErrProtocol, t, wireLen, rawLen)
	}
	if cap(fr.wire) < int(wireLen) {
		fr.wire = make([]byte, wireLen)
	}
	body := fr.wire[:wireLen]
	if _, err := io.ReadFull(fr.r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return frame{}, fmt.Errorf("read %v frame: %w", t, err)
	}
	if checksum(h[:16], body) != sum {
		return frame{}, fmt.Errorf("%w: %v frame %d", ErrChecksum, t, seq)
	}
	if seq != fr.seq {
		return frame{}, fmt.Errorf("%w: frame %d (%v) where %d was due", ErrProtocol, seq, t, fr.seq)
	}
	fr.seq++
	fr.bytes += int64(headerSize + len(body))
	f := frame{t: t, payload: body, wireLen: headerSize + len(body)}
	if flags&flagLZ4 != 0 {
		if cap(fr.raw) < int(rawLen) {
			fr.raw = make([]byte, rawLen)
		}
		n, err := lz4.UncompressBlock(body, fr.raw[:rawLen])
		if err != nil || n != int(rawLen) {
			return frame{}, fmt.Errorf("%w: %v frame %d: bad LZ4 data", ErrProtocol, t, seq)
		}
		f.payload = fr.raw[:rawLen]
	}
	if t == MsgError {
		return f, fmt.Errorf("%w: %s", ErrRemote, truncate(string(f.payload), 1024))
	}
	return f, nil
}

// expect reads the next frame and fails unless it has type t.
func (fr *frameReader) expect(t MsgType) (frame, error) {
	f, err := fr.read()
	if err != nil {
		return f, err
	}
	if f.t != t {
		return f, fmt.Errorf("%w: got %v frame, want %v", ErrProtocol, f.t, t)
	}
	return f, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// writePreamble writes the stream preamble: magic and protocol version.
func writePreamble(w io.Writer) error {
	var b [12]byte
	copy(b[:], magic[:])
	binary.LittleEndian.PutUint32(b[8:], Version)
	if _, err := w.Write(b[:]); err != nil {
		return fmt.Errorf("send preamble: %w", err)
	}
	return nil
}

// readPreamble reads and checks the peer's preamble.
func readPreamble(r io.Reader) error {
	var b [12]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read preamble: %w", err)
	}
	if [8]byte(b[:8]) != magic {
		return fmt.Errorf("%w: bad magic %q", ErrProtocol, b[:8])
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != Version {
		return fmt.Errorf("%w: peer speaks %d, this node %d", ErrVersion, v, Version)
	}
	return nil
}
