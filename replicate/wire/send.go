package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"time"

	"github.com/pierrec/lz4/v4"
	"github.com/zeebo/xxh3"

	"doppel/replicate/store"
)

const metaChunk = 1 << 20

// deadliner is what Send and Receive use, when conn has it, to interrupt
// blocked I/O on cancellation or when the peer gives up. net.Conn has it.
type deadliner interface {
	SetDeadline(time.Time) error
}

// interrupter returns a function that makes blocked I/O on conn fail, or
// one that does nothing when conn cannot be interrupted.
func interrupter(conn io.ReadWriter) func() {
	if d, ok := conn.(deadliner); ok {
		return func() { _ = d.SetDeadline(time.Unix(1, 0)) }
	}
	return func() {}
}

// kindOf maps content kinds to the frame type that carries them.
type content struct {
	hashes []store.Hash
	kinds  []MsgType
}

// uniqueContent lists the epoch's distinct non-zero hashes in order of
// first reference (the order of store.Epoch.UniqueHashes) with the frame
// type each travels in.
func uniqueContent(ep *store.Epoch) content {
	var c content
	seen := make(map[store.Hash]struct{})
	zero := store.ZeroPageHash()
	add := func(h store.Hash, t MsgType) {
		if h == zero {
			return
		}
		if _, ok := seen[h]; ok {
			return
		}
		seen[h] = struct{}{}
		c.hashes = append(c.hashes, h)
		c.kinds = append(c.kinds, t)
	}
	for i := range ep.Images {
		t := MsgBlobs
		if ep.Images[i].Kind == store.KindPages {
			t = MsgPages
		}
		for _, h := range ep.Images[i].Hashes {
			add(h, t)
		}
	}
	if ep.Data != nil {
		for i := range ep.Data.Files {
			for _, h := range ep.Data.Files[i].Blocks {
				add(h, MsgBlocks)
			}
		}
	}
	return c
}

// Send streams epoch n of app from st to the receiver at the other end of
// conn (see Receive) and returns once the receiver has committed it and
// acknowledged. Only content the receiver lacks crosses the wire, and the
// epoch description travels as a delta when the receiver holds the parent.
// conn must be bidirectional; when it has SetDeadline (a net.Conn),
// cancelling ctx or a receiver error interrupts blocked I/O. On error the
// caller should close conn. The epoch is pinned while it is sent.
func Send(ctx context.Context, conn io.ReadWriter, st *store.Store, app string, n uint64, cfg Config) (Stats, error) {
	cfg = cfg.normalized()
	stats := Stats{App: app, Epoch: n}
	ep, release, err := st.Pin(app, n)
	if err != nil {
		return stats, fmt.Errorf("send %s epoch %d: %w", app, n, err)
	}
	defer release()
	stats.Parent = ep.Manifest.Parent
	interrupt := interrupter(conn)
	stop := context.AfterFunc(ctx, interrupt)
	defer stop()
	s := &sender{ctx: ctx, conn: conn, st: st, cfg: cfg, ep: ep, stats: &stats, interrupt: interrupt,
		fw: &frameWriter{w: conn}, fr: &frameReader{r: conn},
		frames: make(chan inFrame, 1), consumed: make(chan struct{}), quit: make(chan struct{}), readerDone: make(chan struct{})}
	err = s.run()
	stats.WireSent = s.fw.bytes
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		if !errors.Is(err, ErrRemote) {
			sendError(conn, s.fw, err, cfg.ErrorTimeout)
		}
		interrupt()
	}
	close(s.quit)
	if s.readerStarted {
		select {
		case <-s.readerDone:
			stats.WireRecv = s.fr.bytes
		case <-time.After(cfg.ErrorTimeout): // a connection without deadlines keeps the reader blocked
		}
	}
	if err != nil {
		return stats, fmt.Errorf("send %s epoch %d: %w", app, n, err)
	}
	cfg.Logger.Info("epoch sent", "app", app, "epoch", n, "bytes", stats.WireSent,
		"wanted", stats.Wanted, "delta", stats.Delta, "xfer", stats.Transfer, "ack", stats.Ack)
	return stats, nil
}

type sender struct {
	ctx       context.Context
	conn      io.ReadWriter
	st        *store.Store
	cfg       Config
	ep        *store.Epoch
	stats     *Stats
	interrupt func()
	fw        *frameWriter
	fr        *frameReader

	// A goroutine reads the receiver's frames all along, so an error frame
	// interrupts whatever the sender is writing.
	frames        chan inFrame
	consumed      chan struct{}
	quit          chan struct{}
	readerDone    chan struct{}
	readerStarted bool
}

type inFrame struct {
	f   frame
	err error
}

// readLoop delivers the receiver's frames to next, one at a time, until
// the ack, an error, or quit. A read error or error frame interrupts the
// connection at once.
func (s *sender) readLoop() {
	defer close(s.readerDone)
	for {
		f, err := s.fr.read()
		if err != nil {
			s.interrupt()
		}
		select {
		case s.frames <- inFrame{f, err}:
		case <-s.quit:
			return
		}
		if err != nil || f.t == MsgAck {
			return
		}
		select {
		case <-s.consumed:
		case <-s.quit:
			return
		}
	}
}

// next returns the receiver's next frame; its payload is valid until the
// following call.
func (s *sender) next() (frame, error) {
	if !s.readerStarted {
		s.readerStarted = true
		go s.readLoop()
	} else {
		s.consumed <- struct{}{}
	}
	in := <-s.frames
	return in.f, in.err
}

// expect returns the next frame and fails unless it has type t.
func (s *sender) expect(t MsgType) (frame, error) {
	f, err := s.next()
	if err != nil {
		return f, err
	}
	if f.t != t {
		return f, fmt.Errorf("%w: got %v frame, want %v", ErrProtocol, f.t, t)
	}
	return f, nil
}

func (s *sender) run() error {
	t0 := time.Now()
	m := &s.ep.Manifest
	h := hello{app: m.App, epoch: m.Epoch, parent: m.Parent, term: m.ClusterTerm}
	var err error
	if h.digest, err = s.ep.Digest(); err != nil {
		return err
	}
	// The parent stays pinned until the delta is encoded against it.
	var pep *store.Epoch
	if m.Parent != 0 {
		var prel func()
		if pep, prel, err = s.st.Pin(m.App, m.Parent); err == nil {
			defer prel()
			if h.parentDigest, err = pep.Digest(); err != nil {
				return err
			}
		} else {
			pep = nil // gone here: the receiver gets the full description
		}
	}
	if err := writePreamble(s.conn); err != nil {
		return err
	}
	if err := s.fw.write(MsgHello, h.encode(), false); err != nil {
		return err
	}
	if err := readPreamble(s.conn); err != nil {
		return err
	}
	f, err := s.expect(MsgReady)
	if err != nil {
		return err
	}
	if len(f.payload) != 1 || f.payload[0]&^3 != 0 {
		return fmt.Errorf("%w: bad ready frame", ErrProtocol)
	}
	haveEpoch, haveParent := f.payload[0]&1 != 0, f.payload[0]&2 != 0
	s.stats.Handshake = time.Since(t0)
	if haveEpoch {
		s.stats.AlreadyHad = true
		t1 := time.Now()
		if err := s.fw.write(MsgEnd, uvarints(0, 0), false); err != nil {
			return err
		}
		if err := s.readAck(); err != nil {
			return err
		}
		s.stats.Ack = time.Since(t1)
		return nil
	}

	// Description.
	t1 := time.Now()
	var desc []byte
	enc := byte(encFull)
	if haveParent {
		if pep == nil {
			return fmt.Errorf("%w: receiver claims a parent the sender did not offer", ErrProtocol)
		}
		if desc, err = encodeDelta(s.ep, pep); err != nil {
			return err
		}
		enc = encDelta
		s.stats.Delta = true
	}
	if desc == nil {
		if desc, err = s.ep.MarshalBinary(); err != nil {
			return err
		}
	}
	before := s.fw.bytes
	for off := 0; off < len(desc); off += metaChunk {
		if err := s.fw.write(MsgMeta, desc[off:min(off+metaChunk, len(desc))], true); err != nil {
			return err
		}
	}
	end := append([]byte{enc}, uvarints(uint64(len(desc)))...)
	end = binary.LittleEndian.AppendUint64(end, xxh3.Hash(desc))
	if err := s.fw.write(MsgMetaEnd, end, false); err != nil {
		return err
	}
	s.stats.MetaRaw, s.stats.MetaWire = int64(len(desc)), s.fw.bytes-before
	s.stats.Meta = time.Since(t1)

	// Negotiation.
	t2 := time.Now()
	uc := uniqueContent(s.ep)
	s.stats.Unique = int64(len(uc.hashes))
	bitmap := make([]byte, 0, (len(uc.hashes)+7)/8)
	for {
		f, err := s.next()
		if err != nil {
			return err
		}
		if f.t == MsgWantEnd {
			v, err := decodeUvarints("want-end", f.payload, 2)
			if err != nil {
				return err
			}
			if v[0] != uint64(len(uc.hashes)) || len(bitmap) != (len(uc.hashes)+7)/8 {
				return fmt.Errorf("%w: want bitmap of %d bits for %d hashes", ErrProtocol, v[0], len(uc.hashes))
			}
			var ones int
			for _, c := range bitmap {
				ones += bits.OnesCount8(c)
			}
			if uint64(ones) != v[1] {
				return fmt.Errorf("%w: want bitmap has %d bits set, end says %d", ErrProtocol, ones, v[1])
			}
			break
		}
		if f.t != MsgWant {
			return fmt.Errorf("%w: got %v frame during negotiation", ErrProtocol, f.t)
		}
		if len(bitmap)+len(f.payload) > cap(bitmap) {
			return fmt.Errorf("%w: want bitmap longer than %d bytes", ErrProtocol, cap(bitmap))
		}
		bitmap = append(bitmap, f.payload...)
	}
	var want content
	for i := range uc.hashes {
		if bitmap[i/8]&(1<<(i%8)) != 0 {
			want.hashes = append(want.hashes, uc.hashes[i])
			want.kinds = append(want.kinds, uc.kinds[i])
		}
	}
	s.stats.Wanted = int64(len(want.hashes))
	s.stats.Negotiate = time.Since(t2)

	// Content. The reader goroutine goes on reading meanwhile: an error
	// frame from the receiver interrupts the transfer.
	t3 := time.Now()
	answer := make(chan error, 1)
	go func() { answer <- s.readAck() }()
	// remote prefers the receiver's explanation to the write error it
	// caused; a connection without deadlines may not deliver one.
	remote := func(err error) error {
		select {
		case aerr := <-answer:
			if aerr != nil && errors.Is(aerr, ErrRemote) {
				return aerr
			}
		case <-time.After(s.cfg.ErrorTimeout):
		}
		return err
	}
	if err := s.transfer(want); err != nil {
		return remote(err)
	}
	if err := s.fw.write(MsgEnd, uvarints(uint64(len(want.hashes)), uint64(s.stats.DataRaw)), false); err != nil {
		return remote(err)
	}
	s.stats.Transfer = time.Since(t3)
	t4 := time.Now()
	if err := <-answer; err != nil {
		return err
	}
	s.stats.Ack = time.Since(t4)
	return nil
}

// readAck reads the receiver's acknowledgement of this epoch.
func (s *sender) readAck() error {
	f, err := s.expect(MsgAck)
	if err != nil {
		return err
	}
	v, err := decodeUvarints("ack", f.payload, 1)
	if err != nil {
		return err
	}
	if v[0] != s.ep.Manifest.Epoch {
		return fmt.Errorf("%w: ack for epoch %d", ErrProtocol, v[0])
	}
	return nil
}

// sendJob is one data frame on its way through the compression pipeline.
type sendJob struct {
	t       MsgType
	seq     uint32
	raw     []byte
	enc     []byte
	err     error
	records int
	done    chan struct{}
}

// transfer sends the wanted content: a producer reads it from the store in
// order and cuts it into batches, workers compress and checksum them, and
// this goroutine writes them in order.
func (s *sender) transfer(want content) error {
	workers := s.cfg.Workers
	jobs := make(chan *sendJob, workers)
	order := make(chan *sendJob, workers*2)
	rawFree := make(chan []byte, workers*2+2)
	encFree := make(chan []byte, workers*2+2)
	for range cap(rawFree) {
		rawFree <- make([]byte, 0, s.cfg.BatchBytes+store.ChunkSize+16)
		encFree <- make([]byte, 0, headerSize+lz4.CompressBlockBound(s.cfg.BatchBytes+store.ChunkSize+16))
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(quit)

	// Producer.
	var prodErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		defer close(order)
		seq := s.fw.seq
		var cur *sendJob
		emit := func() bool {
			if cur == nil {
				return true
			}
			cur.seq = seq
			seq++
			select {
			case order <- cur:
			case <-quit:
				return false
			}
			select {
			case jobs <- cur:
			case <-quit:
				return false
			}
			cur = nil
			return true
		}
		err := s.st.Fetch(want.hashes, func(i int, data []byte) error {
			t := want.kinds[i]
			need := binary.MaxVarintLen32 + len(data)
			if cur != nil && (cur.t != t || len(cur.raw)+need > s.cfg.BatchBytes) {
				if !emit() {
					return errStopped
				}
			}
			if cur == nil {
				var buf []byte
				select {
				case buf = <-rawFree:
				case <-quit:
					return errStopped
				}
				cur = &sendJob{t: t, raw: buf[:0], done: make(chan struct{})}
			}
			cur.raw = binary.AppendUvarint(cur.raw, uint64(len(data)))
			cur.raw = append(cur.raw, data...)
			cur.records++
			return nil
		})
		if err == nil {
			emit()
		} else if !errors.Is(err, errStopped) {
			prodErr = err
		}
	}()

	// Compressors.
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c lz4.Compressor
			for j := range jobs {
				var buf []byte
				select {
				case buf = <-encFree:
				case <-quit:
					j.err = errStopped
					close(j.done)
					continue
				}
				j.enc, j.err = encodeFrame(buf, &c, j.t, j.seq, j.raw, true)
				close(j.done)
			}
		}()
	}

	// Writer.
	for j := range order {
		select {
		case <-j.done:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		if j.err != nil {
			return j.err
		}
		if j.seq != s.fw.seq {
			return fmt.Errorf("send pipeline out of order: frame %d, expected %d", j.seq, s.fw.seq)
		}
		if err := s.fw.writeEncoded(j.enc); err != nil {
			return err
		}
		s.stats.DataRaw += int64(len(j.raw)) - int64(recordOverhead(j.raw))
		s.stats.DataWire += int64(len(j.enc))
		switch j.t {
		case MsgPages:
			s.stats.Pages += int64(j.records)
		case MsgBlobs:
			s.stats.Blobs += int64(j.records)
		case MsgBlocks:
			s.stats.Blocks += int64(j.records)
		}
		rawFree <- j.raw[:0]
		encFree <- j.enc[:0]
	}
	if prodErr != nil {
		return prodErr
	}
	return s.ctx.Err()
}

var errStopped = errors.New("stopped")

// recordOverhead returns the bytes of length prefixes in a batch.
func recordOverhead(raw []byte) int {
	n := 0
	for len(raw) > 0 {
		v, k := binary.Uvarint(raw)
		if k <= 0 || uint64(len(raw)-k) < v {
			return n
		}
		n += k
		raw = raw[k+int(v):]
	}
	return n
}

// sendError tries, for at most timeout, to tell the peer why this side
// gives up.
func sendError(conn io.ReadWriter, fw *frameWriter, cause error, timeout time.Duration) {
	msg := []byte(truncate(cause.Error(), 1024))
	if d, ok := conn.(interface{ SetWriteDeadline(time.Time) error }); ok {
		_ = d.SetWriteDeadline(time.Now().Add(timeout))
		_ = fw.write(MsgError, msg, false)
		_ = d.SetWriteDeadline(time.Time{})
		return
	}
	done := make(chan struct{})
	go func() {
		_ = fw.write(MsgError, msg, false)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}
