package journal

import (
	"context"
	"errors"
	"fmt"
	"net"
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
	if err := j.WaitStored(ctx, seq); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unacked wait: %v", err)
	}
	go j.Ack("c1", seq)
	if err := j.WaitStored(ctxT(t), seq); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if err := j.WaitStored(ctxT(t), seq+1); !errors.Is(err, ErrClosed) {
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
	if err := op.WaitStored(ctxT(t), last); err != nil {
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
	if err := op.WaitStored(ctxT(t), 10); err != nil {
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
