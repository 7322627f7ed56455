package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/zeebo/xxh3"

	"doppel/replicate/store"
)

// Receive accepts one epoch from a sender at the other end of conn (see
// Send) into st. It verifies every frame (checksum, sequence, size bounds)
// and every record (its hash), writes through a store transaction, commits
// the epoch (fsynced, atomically) and only then acknowledges. A broken,
// truncated or tampered stream is answered with an error frame and returns
// an error saying what was wrong; the transaction is aborted and the
// store's previous epochs stay as they were. If st already holds the
// epoch, nothing is transferred and the stored epoch is returned.
// conn must be bidirectional; when it has SetDeadline (a net.Conn),
// cancelling ctx interrupts blocked I/O. On error the caller should close
// conn.
func Receive(ctx context.Context, conn io.ReadWriter, st *store.Store, cfg Config) (*store.Epoch, Stats, error) {
	cfg = cfg.normalized()
	interrupt := interrupter(conn)
	stop := context.AfterFunc(ctx, interrupt)
	defer stop()
	r := &receiver{ctx: ctx, conn: conn, st: st, cfg: cfg, fw: &frameWriter{w: conn}, fr: &frameReader{r: conn}}
	ep, err := r.run()
	r.stats.WireSent, r.stats.WireRecv = r.fw.bytes, r.fr.bytes
	if r.txn != nil {
		r.txn.Abort()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		if r.greeted && !errors.Is(err, ErrRemote) {
			sendError(conn, r.fw, err, cfg.ErrorTimeout)
		}
		if r.stats.App != "" {
			return nil, r.stats, fmt.Errorf("receive %s epoch %d: %w", r.stats.App, r.stats.Epoch, err)
		}
		return nil, r.stats, fmt.Errorf("receive: %w", err)
	}
	cfg.Logger.Info("epoch received", "app", r.stats.App, "epoch", r.stats.Epoch, "bytes", r.stats.WireRecv,
		"wanted", r.stats.Wanted, "delta", r.stats.Delta, "xfer", r.stats.Transfer, "ack", r.stats.Ack)
	return ep, r.stats, nil
}

type receiver struct {
	ctx     context.Context
	conn    io.ReadWriter
	st      *store.Store
	cfg     Config
	fw      *frameWriter
	fr      *frameReader
	stats   Stats
	txn     *store.Txn
	greeted bool // preamble sent: the peer can read an error frame
}

func (r *receiver) run() (*store.Epoch, error) {
	t0 := time.Now()
	if err := readPreamble(r.conn); err != nil {
		return nil, err
	}
	f, err := r.fr.expect(MsgHello)
	if err != nil {
		return nil, err
	}
	if err := writePreamble(r.conn); err != nil {
		return nil, err
	}
	r.greeted = true
	h, err := decodeHello(f.payload)
	if err != nil {
		return nil, err
	}
	r.stats.App, r.stats.Epoch, r.stats.Parent = h.app, h.epoch, h.parent

	// Epochs this store holds under the epoch's or the parent's number
	// with other digests were made by another OP: they go, from the
	// lowest such number on (diverged), before anything is decoded
	// against them.
	diverged := uint64(0)
	if ep, err := r.st.Load(h.app, h.epoch); err == nil {
		if d, err := ep.Digest(); err == nil && d == h.digest {
			r.stats.AlreadyHad = true
			if err := r.fw.write(MsgReady, []byte{1}, false); err != nil {
				return nil, err
			}
			r.stats.Handshake = time.Since(t0)
			if _, err := r.fr.expect(MsgEnd); err != nil {
				return nil, err
			}
			return ep, r.fw.write(MsgAck, uvarints(h.epoch), false)
		}
		diverged = h.epoch
	}
	var parent *store.Epoch
	if h.parent != 0 {
		if p, err := r.st.Load(h.app, h.parent); err == nil {
			if d, err := p.Digest(); err == nil && d == h.parentDigest {
				parent = p
			} else if h.parentDigest != (store.Hash{}) {
				diverged = h.parent
			}
		}
	}
	drop, err := staleEpochs(r.st, h, diverged)
	if err != nil {
		return nil, err
	}
	if len(drop) > 0 {
		if _, err := r.st.Discard(h.app, drop); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrDiverged, err)
		}
		r.cfg.Logger.Warn("dropped epochs another OP made", "app", h.app, "epochs", drop,
			"receiving", h.epoch, "term", h.term)
	}
	r.txn, err = r.st.Begin(h.app, h.epoch, h.parent)
	if err != nil {
		return nil, err
	}
	ready := byte(0)
	if parent != nil {
		ready |= 2
	}
	if err := r.fw.write(MsgReady, []byte{ready}, false); err != nil {
		return nil, err
	}
	r.stats.Handshake = time.Since(t0)

	// Description.
	t1 := time.Now()
	before := r.fr.bytes
	var desc, end []byte
	for {
		f, err := r.fr.read()
		if err != nil {
			return nil, err
		}
		if f.t == MsgMetaEnd {
			end = f.payload
			break
		}
		if f.t != MsgMeta {
			return nil, fmt.Errorf("%w: got %v frame in the description", ErrProtocol, f.t)
		}
		if int64(len(desc)+len(f.payload)) > r.cfg.MaxMeta {
			return nil, fmt.Errorf("%w: description exceeds %d bytes", ErrProtocol, r.cfg.MaxMeta)
		}
		desc = append(desc, f.payload...)
	}
	if len(end) < 10 {
		return nil, fmt.Errorf("%w: short meta-end frame", ErrProtocol)
	}
	enc := end[0]
	total, k := binary.Uvarint(end[1:])
	if k <= 0 || len(end) != 1+k+8 {
		return nil, fmt.Errorf("%w: bad meta-end frame", ErrProtocol)
	}
	if total != uint64(len(desc)) || binary.LittleEndian.Uint64(end[1+k:]) != xxh3.Hash(desc) {
		return nil, fmt.Errorf("%w: description of %d bytes does not match its end frame (%d bytes)", ErrChecksum, len(desc), total)
	}
	r.stats.MetaRaw, r.stats.MetaWire = int64(len(desc)), r.fr.bytes-before
	var ep *store.Epoch
	switch enc {
	case encFull:
		ep = &store.Epoch{}
		if err := ep.UnmarshalBinary(desc); err != nil {
			return nil, fmt.Errorf("%w: description: %v", ErrProtocol, err)
		}
	case encDelta:
		if parent == nil {
			return nil, fmt.Errorf("%w: delta description without a parent", ErrProtocol)
		}
		r.stats.Delta = true
		if ep, err = decodeDelta(desc, parent, r.cfg.MaxHashes); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: unknown description encoding %d", ErrProtocol, enc)
	}
	if m := ep.Manifest; m.App != h.app || m.Epoch != h.epoch || m.Parent != h.parent {
		return nil, fmt.Errorf("%w: description is of %s epoch %d parent %d", ErrProtocol, m.App, m.Epoch, m.Parent)
	}
	if ep.Manifest.ClusterTerm != h.term {
		return nil, fmt.Errorf("%w: description of cluster term %d, hello says %d", ErrProtocol, ep.Manifest.ClusterTerm, h.term)
	}
	if d, err := ep.Digest(); err != nil || d != h.digest {
		return nil, fmt.Errorf("%w: the description decoded here is not the epoch the sender announced", ErrChecksum)
	}
	r.stats.Meta = time.Since(t1)

	// Negotiation: one bit per distinct hash, set for those this store lacks.
	t2 := time.Now()
	uc := uniqueContent(ep)
	r.stats.Unique = int64(len(uc.hashes))
	bitmap := make([]byte, (len(uc.hashes)+7)/8)
	var want content
	for i, hh := range uc.hashes {
		if !r.txn.Has(hh) {
			bitmap[i/8] |= 1 << (i % 8)
			want.hashes = append(want.hashes, hh)
			want.kinds = append(want.kinds, uc.kinds[i])
		}
	}
	r.stats.Wanted = int64(len(want.hashes))
	for off := 0; off < len(bitmap); off += metaChunk {
		if err := r.fw.write(MsgWant, bitmap[off:min(off+metaChunk, len(bitmap))], true); err != nil {
			return nil, err
		}
	}
	if err := r.fw.write(MsgWantEnd, uvarints(uint64(len(uc.hashes)), uint64(len(want.hashes))), false); err != nil {
		return nil, err
	}
	r.stats.Negotiate = time.Since(t2)

	// Content, in want order.
	t3 := time.Now()
	next := 0
	for {
		f, err := r.fr.read()
		if err != nil {
			return nil, err
		}
		if f.t == MsgEnd {
			v, err := decodeUvarints("end", f.payload, 2)
			if err != nil {
				return nil, err
			}
			if next != len(want.hashes) || v[0] != uint64(next) || v[1] != uint64(r.stats.DataRaw) {
				return nil, fmt.Errorf("%w: stream ended after %d of %d records (sender says %d records, %d bytes; got %d bytes)",
					ErrProtocol, next, len(want.hashes), v[0], v[1], r.stats.DataRaw)
			}
			break
		}
		if f.t != MsgPages && f.t != MsgBlobs && f.t != MsgBlocks {
			return nil, fmt.Errorf("%w: got %v frame during transfer", ErrProtocol, f.t)
		}
		r.stats.DataWire += int64(f.wireLen)
		p := f.payload
		for len(p) > 0 {
			n, k := binary.Uvarint(p)
			if k <= 0 || n > store.ChunkSize || n > uint64(len(p)-k) {
				return nil, fmt.Errorf("%w: bad record in %v frame", ErrProtocol, f.t)
			}
			if next >= len(want.hashes) {
				return nil, fmt.Errorf("%w: more records than wanted", ErrProtocol)
			}
			if want.kinds[next] != f.t {
				return nil, fmt.Errorf("%w: record %d in a %v frame, want %v", ErrProtocol, next, f.t, want.kinds[next])
			}
			data := p[k : k+int(n)]
			if err := r.txn.Put(want.hashes[next], data); err != nil {
				if errors.Is(err, store.ErrHashMismatch) {
					return nil, fmt.Errorf("%w: record %d does not match its hash", ErrChecksum, next)
				}
				return nil, err
			}
			switch f.t {
			case MsgPages:
				r.stats.Pages++
			case MsgBlobs:
				r.stats.Blobs++
			case MsgBlocks:
				r.stats.Blocks++
			}
			r.stats.DataRaw += int64(n)
			next++
			p = p[k+int(n):]
		}
		if err := r.ctx.Err(); err != nil {
			return nil, err
		}
	}
	r.stats.Transfer = time.Since(t3)

	// Commit, then acknowledge.
	t4 := time.Now()
	r.txn.SetImages(ep.Images)
	r.txn.SetData(ep.Data)
	committed, err := r.txn.Commit(ep.Manifest)
	if err != nil {
		return nil, err
	}
	r.txn = nil
	if err := r.fw.write(MsgAck, uvarints(h.epoch), false); err != nil {
		return nil, fmt.Errorf("epoch committed, acknowledgement failed: %w", err)
	}
	r.stats.Ack = time.Since(t4)
	return committed, nil
}

// staleEpochs lists the epochs st must drop before it takes h's epoch:
// those from diverged on (when set), and those above h's epoch of an older
// cluster term, which must not pass for the newest whatever their numbers.
// If one of them, or the newest epoch st holds, is of a newer term than
// the sender's, the sender is the deposed OP: ErrDiverged, and it neither
// removes a newer OP's epoch nor adds one that would pass for the newest.
func staleEpochs(st *store.Store, h hello, diverged uint64) ([]uint64, error) {
	ns, err := st.Epochs(h.app)
	if err != nil || len(ns) == 0 {
		return nil, err
	}
	newest := ns[len(ns)-1]
	var drop []uint64
	for _, n := range ns {
		fromDiverged := diverged != 0 && n >= diverged
		above := h.term != 0 && n > h.epoch
		newestHeld := h.term != 0 && n == newest
		if !fromDiverged && !above && !newestHeld {
			continue
		}
		o, err := st.Load(h.app, n)
		if err != nil {
			continue // dropped meanwhile
		}
		switch t := o.Manifest.ClusterTerm; {
		case t > h.term:
			return nil, fmt.Errorf("%w: this node holds epoch %d of cluster term %d, the sender's is of term %d", ErrDiverged, n, t, h.term)
		case fromDiverged || (above && t < h.term):
			drop = append(drop, n)
		}
	}
	return drop, nil
}
