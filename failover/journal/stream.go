package journal

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The replication stream between the OP (sender) and one clone (receiver):
//
//	R→S hello  magic "DPLJRNL1", last seq the receiver holds (u64 LE)
//	S→R reset  seq: the receiver's journal restarts after seq (it was behind
//	           the sender's oldest entry)
//	S→R entry  seq u64, conn u64, kind u8, data
//	R→S ack    seq u64: everything up to seq is stored
//
// A frame is a type byte, a payload length (u32 LE, at most MaxFrame) and
// the payload. Message types are an append-only enum; Version is checked in
// the hello's magic.

// Version of the stream format.
const Version = 1

// MaxFrame bounds a frame's payload; a longer message cannot be journaled.
const MaxFrame = 16 << 20

const (
	frameReset uint8 = 1
	frameEntry uint8 = 2
	frameAck   uint8 = 3
)

var magic = [8]byte{'D', 'P', 'L', 'J', 'R', 'N', 'L', '0' + Version}

// ErrProtocol is wrapped by errors about malformed streams.
var ErrProtocol = errors.New("journal stream: protocol error")

func writeFrame(w io.Writer, typ uint8, payload []byte) error {
	var hdr [5]byte
	hdr[0] = typ
	binary.LittleEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// writeAck writes an ack frame in one Write: the receiver writes it
// straight to the connection, where each Write is a record and a syscall.
func writeAck(w io.Writer, seq uint64) error {
	var b [5 + 8]byte
	b[0] = frameAck
	binary.LittleEndian.PutUint32(b[1:], 8)
	binary.LittleEndian.PutUint64(b[5:], seq)
	_, err := w.Write(b[:])
	return err
}

func readFrame(r io.Reader, buf []byte) (uint8, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.LittleEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes, limit %d", ErrProtocol, n, MaxFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	return hdr[0], buf, nil
}

// Send streams j's entries to one clone over conn until ctx ends or the
// stream breaks, recording the clone's acknowledgements in j. The caller
// closes conn to stop it early.
func Send(ctx context.Context, conn io.ReadWriter, j *Journal, clone string) error {
	br := bufio.NewReader(conn)
	var hello [16]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return fmt.Errorf("journal hello from %s: %w", clone, err)
	}
	if [8]byte(hello[:8]) != magic {
		return fmt.Errorf("%w: bad hello from %s (another version?)", ErrProtocol, clone)
	}
	after := binary.LittleEndian.Uint64(hello[8:])
	j.Ack(clone, after)

	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 8)
		for {
			typ, p, err := readFrame(br, buf)
			if err != nil {
				errc <- err
				return
			}
			if typ != frameAck || len(p) != 8 {
				errc <- fmt.Errorf("%w: frame %d of %d bytes from %s", ErrProtocol, typ, len(p), clone)
				return
			}
			j.Ack(clone, binary.LittleEndian.Uint64(p))
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case err := <-errc:
			errc <- err
			cancel()
		case <-ctx.Done():
		}
	}()

	// stopped prefers the reason the acknowledgement reader stopped.
	stopped := func(err error) error {
		select {
		case rerr := <-errc:
			return fmt.Errorf("journal to %s: %w", clone, rerr)
		default:
			return err
		}
	}
	bw := bufio.NewWriterSize(conn, 64<<10)
	payload := make([]byte, 0, 4096)
	for {
		entries, err := j.Next(ctx, after, 256)
		if errors.Is(err, ErrTrimmed) {
			// The clone is behind the oldest entry: its journal restarts
			// at ours (it receives a newer epoch than those entries).
			j.mu.Lock()
			start := j.first - 1
			j.mu.Unlock()
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], start)
			// Flushed at once: the journal may stay empty for a while,
			// and the clone should not hold entries the OP dropped.
			if err := writeFrame(bw, frameReset, b[:]); err != nil {
				return fmt.Errorf("journal to %s: %w", clone, err)
			}
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("journal to %s: %w", clone, err)
			}
			after = start
			continue
		}
		if err != nil {
			return stopped(err)
		}
		for _, e := range entries {
			payload = binary.LittleEndian.AppendUint64(payload[:0], e.Seq)
			payload = binary.LittleEndian.AppendUint64(payload, e.Conn)
			payload = append(payload, e.Kind)
			payload = append(payload, e.Data...)
			if err := writeFrame(bw, frameEntry, payload); err != nil {
				return fmt.Errorf("journal to %s: %w", clone, err)
			}
			after = e.Seq
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("journal to %s: %w", clone, err)
		}
		// One batch in flight: the entries appended while the clone
		// stores this one go out together, so that under load a record,
		// a wake-up and an acknowledgement serve many messages.
		if err := j.waitAcked(ctx, clone, after); err != nil {
			return stopped(err)
		}
	}
}

// Receive stores the entries an OP streams into j, acknowledging each batch
// once stored, until the stream ends (nil on a clean end) or breaks.
func Receive(ctx context.Context, conn io.ReadWriter, j *Journal) error {
	var hello [16]byte
	copy(hello[:], magic[:])
	binary.LittleEndian.PutUint64(hello[8:], j.Last())
	if _, err := conn.Write(hello[:]); err != nil {
		return err
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	buf := make([]byte, 4096)
	for ctx.Err() == nil {
		typ, p, err := readFrame(br, buf)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch typ {
		case frameReset:
			if len(p) != 8 {
				return fmt.Errorf("%w: reset of %d bytes", ErrProtocol, len(p))
			}
			j.reset(binary.LittleEndian.Uint64(p))
		case frameEntry:
			if len(p) < 17 {
				return fmt.Errorf("%w: entry of %d bytes", ErrProtocol, len(p))
			}
			e := Entry{
				Seq:  binary.LittleEndian.Uint64(p),
				Conn: binary.LittleEndian.Uint64(p[8:]),
				Kind: p[16],
				Data: append([]byte(nil), p[17:]...),
			}
			if err := j.Put(e); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: unknown frame type %d", ErrProtocol, typ)
		}
		if br.Buffered() == 0 {
			if err := writeAck(conn, j.Last()); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// reset empties the journal so that the next entry is after+1.
func (j *Journal) reset(after uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = nil
	j.bytes = 0
	j.first, j.last = after+1, after
	j.notify()
}
