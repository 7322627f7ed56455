package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAppendNextTrim(t *testing.T) {
	j := New(10)
	for i := 0; i < 5; i++ {
		if seq := j.Append(1, KindData, []byte{byte(i)}); seq != uint64(11+i) {
			t.Fatalf("seq = %d", seq)
		}
	}
	es, err := j.Next(ctxT(t), 12, 2)
	if err != nil || len(es) != 2 || es[0].Seq != 13 || es[1].Seq != 14 {
		t.Fatalf("Next = %+v, %v", es, err)
	}
	if es := j.Since(13); len(es) != 2 || es[0].Seq != 14 {
		t.Fatalf("Since = %+v", es)
	}
	j.Trim(13)
	if n, b := j.Backlog(); n != 2 || b != 2 {
		t.Fatalf("backlog %d %d", n, b)
	}
	if _, err := j.Next(ctxT(t), 11, 10); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("Next behind trim: %v", err)
	}
	if es := j.Since(0); len(es) != 2 || es[0].Seq != 14 {
		t.Fatalf("Since(0) after trim = %+v", es)
	}
	// Next waits for a new entry.
	go func() { j.Append(2, KindClose, nil) }()
	es, err = j.Next(ctxT(t), 15, 10)
	if err != nil || len(es) != 1 || es[0].Kind != KindClose {
		t.Fatalf("waiting Next = %+v, %v", es, err)
	}
}

func TestWaitStored(t *testing.T) {
	j := New(0)
	seq := j.Append(1, KindData, []byte("x"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := j.WaitStored(ctx, seq, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unacked wait: %v", err)
	}
	go j.Ack("c1", seq)
	if err := j.WaitStored(ctxT(t), seq, 0); err != nil {
		t.Fatal(err)
	}
	if err := j.WaitStored(context.Background(), seq+1, 20*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past its timeout: %v", err)
	}
	j.Close()
	if err := j.WaitStored(ctxT(t), seq+1, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
}

func TestPutOrder(t *testing.T) {
	j := New(0)
	if err := j.Put(Entry{Seq: 1, Kind: KindData}); err != nil {
		t.Fatal(err)
	}
	if err := j.Put(Entry{Seq: 1, Kind: KindData}); err != nil {
		t.Fatalf("repeat: %v", err)
	}
	if err := j.Put(Entry{Seq: 3, Kind: KindData}); err == nil {
		t.Fatal("gap accepted")
	}
}

// replicate connects an OP journal to a clone journal over a pipe.
func replicate(t *testing.T, op, clone *Journal, name string) func() {
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan error, 1)
	recv := make(chan error, 1)
	go func() { sent <- Send(ctx, a, op, name) }()
	go func() { recv <- Receive(ctx, b, clone) }()
	return func() {
		cancel()
		a.Close()
		b.Close()
		<-sent
		<-recv
	}
}

func TestStream(t *testing.T) {
	op, clone := New(0), New(0)
	stop := replicate(t, op, clone, "c1")
	defer stop()
	var last uint64
	for i := 0; i < 1000; i++ {
		last = op.Append(uint64(i%7), KindData, []byte(fmt.Sprintf("msg %d\n", i)))
	}
	if err := op.WaitStored(ctxT(t), last, 0); err != nil {
		t.Fatal(err)
	}
	es := clone.Since(0)
	if len(es) != 1000 || es[999].Seq != last || string(es[42].Data) != "msg 42\n" || es[42].Conn != 0 {
		t.Fatalf("clone holds %d entries, last %+v", len(es), es[len(es)-1])
	}
}

func TestStreamResetsLaggingClone(t *testing.T) {
	op := New(0)
	for i := 0; i < 10; i++ {
		op.Append(1, KindData, []byte("x"))
	}
	op.Trim(8)
	clone := New(3) // holds nothing past 3; 4..8 are gone on the OP
	stop := replicate(t, op, clone, "c1")
	defer stop()
	if err := op.WaitStored(ctxT(t), 10, 0); err != nil {
		t.Fatal(err)
	}
	es := clone.Since(0)
	if len(es) != 2 || es[0].Seq != 9 {
		t.Fatalf("clone after reset: %+v", es)
	}
}

func TestStreamGarbage(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		_, _ = b.Write([]byte("not a journal hello at all"))
		b.Close()
	}()
	if err := Send(ctxT(t), a, New(0), "x"); !errors.Is(err, ErrProtocol) {
		t.Fatalf("garbage hello: %v", err)
	}
	c, d := net.Pipe()
	defer c.Close()
	go func() {
		buf := make([]byte, 16)
		_, _ = d.Read(buf)
		_, _ = d.Write([]byte{frameEntry, 0xff, 0xff, 0xff, 0x7f})
		d.Close()
	}()
	if err := Receive(ctxT(t), c, New(0)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("huge frame: %v", err)
	}
}

// TestStreamOneBatchInFlight checks that a stream holds back new entries
// until the clone acknowledged the batch it has, then sends them together.
func TestStreamOneBatchInFlight(t *testing.T) {
	op := New(0)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx := ctxT(t)
	go func() { _ = Send(ctx, a, op, "c1") }()
	var hello [16]byte
	copy(hello[:], magic[:])
	if _, err := b.Write(hello[:]); err != nil {
		t.Fatal(err)
	}
	readEntry := func() uint64 {
		t.Helper()
		typ, p, err := readFrame(b, nil)
		if err != nil || typ != frameEntry || len(p) < 17 {
			t.Fatalf("frame %d (%d bytes): %v", typ, len(p), err)
		}
		return binary.LittleEndian.Uint64(p)
	}
	op.Append(1, KindData, []byte("first"))
	if seq := readEntry(); seq != 1 {
		t.Fatalf("first entry has seq %d", seq)
	}
	for range 49 {
		op.Append(1, KindData, []byte("more"))
	}
	// Nothing more may come before the acknowledgement.
	_ = b.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, _, err := readFrame(b, nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an entry came before the batch was acknowledged: %v", err)
	}
	_ = b.SetReadDeadline(time.Time{})
	if err := writeAck(b, 1); err != nil {
		t.Fatal(err)
	}
	for want := uint64(2); want <= 50; want++ {
		if seq := readEntry(); seq != want {
			t.Fatalf("entry %d after the ack, want %d", seq, want)
		}
	}
	if err := writeAck(b, 50); err != nil {
		t.Fatal(err)
	}
	if err := op.WaitStored(ctx, 50, 0); err != nil {
		t.Fatal(err)
	}
}

// TestNextBehindEmptyJournal checks that a reader behind a journal that
// holds no entries is told so at once (it used to get empty batches in a
// busy loop until the next append).
func TestNextBehindEmptyJournal(t *testing.T) {
	j := New(0)
	for range 5 {
		j.Append(1, KindData, []byte("x"))
	}
	j.Trim(5)
	if es, err := j.Next(ctxT(t), 2, 10); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("reader at 2 after a trim to 5: %d entries, %v", len(es), err)
	}
	if es, err := New(10).Next(ctxT(t), 0, 10); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("reader at 0 of a journal starting after 10: %d entries, %v", len(es), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if es, err := j.Next(ctx, 5, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reader at the end: %d entries, %v (want a wait)", len(es), err)
	}
}

// TestStreamResetsCloneBehindEmptyJournal checks that a clone behind a
// journal trimmed empty is reset at once, not at the next append.
func TestStreamResetsCloneBehindEmptyJournal(t *testing.T) {
	op := New(0)
	for range 10 {
		op.Append(1, KindData, []byte("x"))
	}
	op.Trim(10)
	clone := New(0)
	for seq := uint64(1); seq <= 3; seq++ {
		if err := clone.Put(Entry{Seq: seq, Conn: 1, Kind: KindData, Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	stop := replicate(t, op, clone, "c1")
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := op.WaitStored(ctx, 10, 0); err != nil {
		t.Fatalf("the clone never acknowledged the reset: %v", err)
	}
	if es := clone.Since(0); len(es) != 0 || clone.Last() != 10 {
		t.Fatalf("clone after reset holds %d entries, last %d", len(es), clone.Last())
	}
}
