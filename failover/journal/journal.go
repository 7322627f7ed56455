// Package journal keeps the inbound messages an app's OP received since its
// newest epoch, numbered in one sequence, so that a clone promoted after a
// failure can re-inject them into the restored app.
//
// On the OP, the ingress proxy appends each complete client message and, in
// sync mode, forwards it to the app only once some clone has stored it
// (WaitStored). Senders stream entries to every clone; clones acknowledge
// the highest sequence number they hold. Entries up to the barrier of an
// epoch every clone holds are trimmed.
package journal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Kind of an entry.
const (
	// KindData is a client message.
	KindData uint8 = 1
	// KindClose marks the end of a client connection.
	KindClose uint8 = 2
)

// Entry is one journaled event.
type Entry struct {
	// Seq numbers entries from 1, without gaps.
	Seq uint64
	// Conn identifies the client connection the message came on.
	Conn uint64
	Kind uint8
	Data []byte
}

// ErrClosed is returned by waits on a closed journal.
var ErrClosed = errors.New("journal closed")

// ErrTrimmed means entries asked for are gone: the reader is too far
// behind and must start from a newer epoch.
var ErrTrimmed = errors.New("journal entries already trimmed")

// Journal is an in-memory, ordered log of entries. Safe for concurrent use.
type Journal struct {
	mu sync.Mutex
	// changed is closed and replaced when the entries change (the
	// streams to the clones wait on it), storedCh when stored advances
	// (the proxy's connections wait on it in sync mode): apart, so that
	// an append does not wake every connection waiting for an
	// acknowledgement, nor an acknowledgement the streams.
	changed  chan struct{}
	storedCh chan struct{}
	// ackCh is closed and replaced when any clone's acknowledgement
	// advances: a stream waits on it for its batch in flight.
	ackCh   chan struct{}
	entries []Entry // entries[i].Seq == first+i
	first   uint64  // seq of entries[0] (or next seq when empty)
	last    uint64  // highest seq appended or received
	stored  uint64  // highest seq some clone acknowledged
	acked   map[string]uint64
	bytes   int64
	closed  bool
}

// New returns a journal whose next appended entry gets seq after+1.
func New(after uint64) *Journal {
	return &Journal{changed: make(chan struct{}), storedCh: make(chan struct{}), ackCh: make(chan struct{}), first: after + 1, last: after, stored: after, acked: map[string]uint64{}}
}

// notify wakes the waiters for entries.
func (j *Journal) notify() {
	close(j.changed)
	j.changed = make(chan struct{})
}

// notifyStored wakes the waiters for acknowledgements.
func (j *Journal) notifyStored() {
	close(j.storedCh)
	j.storedCh = make(chan struct{})
}

// Append adds a message of a connection (or its close) and returns its
// sequence number. The journal keeps data; the caller must not change it.
func (j *Journal) Append(conn uint64, kind uint8, data []byte) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.last++
	j.entries = append(j.entries, Entry{Seq: j.last, Conn: conn, Kind: kind, Data: data})
	j.bytes += int64(len(data))
	j.notify()
	return j.last
}

// Put stores an entry received from the OP (clone side). Entries must
// arrive in order; a repeated one is ignored, a gap is an error.
func (j *Journal) Put(e Entry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case e.Seq <= j.last:
		return nil
	case e.Seq != j.last+1:
		return fmt.Errorf("journal: entry %d after %d: entries missing", e.Seq, j.last)
	}
	if len(j.entries) == 0 {
		j.first = e.Seq
	}
	j.entries = append(j.entries, e)
	j.last = e.Seq
	j.bytes += int64(len(e.Data))
	j.notify()
	return nil
}

// Ack records that a clone stored every entry up to seq.
func (j *Journal) Ack(clone string, seq uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if seq > j.acked[clone] {
		j.acked[clone] = seq
		close(j.ackCh)
		j.ackCh = make(chan struct{})
	}
	if seq > j.stored {
		j.stored = seq
		j.notifyStored()
	}
}

// waitAcked blocks until clone acknowledged seq, the journal restarted
// below seq (a trim or reset), or ctx ends.
func (j *Journal) waitAcked(ctx context.Context, clone string, seq uint64) error {
	for {
		j.mu.Lock()
		if j.acked[clone] >= seq || j.closed {
			j.mu.Unlock()
			return nil
		}
		ch := j.ackCh
		j.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Forget drops a clone's acknowledgements (it left the clone set).
func (j *Journal) Forget(clone string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.acked, clone)
}

// WaitStored blocks until some clone acknowledged seq (sync mode), or
// for at most timeout when it is positive (context.DeadlineExceeded). The
// proxy waits here for every message: a timer per wait is cheaper than a
// context per wait.
func (j *Journal) WaitStored(ctx context.Context, seq uint64, timeout time.Duration) error {
	var expired <-chan time.Time
	for {
		j.mu.Lock()
		if j.stored >= seq {
			j.mu.Unlock()
			return nil
		}
		if j.closed {
			j.mu.Unlock()
			return ErrClosed
		}
		ch := j.storedCh
		j.mu.Unlock()
		if expired == nil && timeout > 0 {
			t := time.NewTimer(timeout)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-expired:
			return context.DeadlineExceeded
		case <-ch:
		}
	}
}

// Next returns up to max entries after seq, waiting until there is one.
func (j *Journal) Next(ctx context.Context, after uint64, max int) ([]Entry, error) {
	for {
		j.mu.Lock()
		if j.closed {
			j.mu.Unlock()
			return nil, ErrClosed
		}
		// Entries after seq are gone, whether newer ones are held or
		// not (a trim can empty the journal past a reader's position).
		if after+1 < j.first {
			j.mu.Unlock()
			return nil, fmt.Errorf("%w: asked after %d, oldest is %d", ErrTrimmed, after, j.first)
		}
		if j.last > after {
			i := int(after + 1 - j.first)
			if i < 0 {
				i = 0
			}
			end := min(len(j.entries), i+max)
			out := append([]Entry(nil), j.entries[i:end]...)
			j.mu.Unlock()
			return out, nil
		}
		ch := j.changed
		j.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}

// Since returns every entry after seq, in order.
func (j *Journal) Since(after uint64) []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	i := int(after + 1 - j.first)
	if after+1 < j.first {
		i = 0
	}
	if i >= len(j.entries) {
		return nil
	}
	return append([]Entry(nil), j.entries[i:]...)
}

// Trim drops the entries up to seq (they are part of an epoch every clone
// holds).
func (j *Journal) Trim(upTo uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if upTo < j.first {
		return
	}
	n := int(upTo + 1 - j.first)
	if n > len(j.entries) {
		n = len(j.entries)
	}
	for _, e := range j.entries[:n] {
		j.bytes -= int64(len(e.Data))
	}
	j.entries = append([]Entry(nil), j.entries[n:]...)
	j.first = upTo + 1
	if j.last < upTo {
		j.last = upTo
	}
	j.notify()
}

// Last is the highest sequence number appended or received.
func (j *Journal) Last() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.last
}

// Stored is the highest sequence number some clone acknowledged.
func (j *Journal) Stored() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.stored
}

// Backlog is the number of entries and bytes held.
func (j *Journal) Backlog() (entries int, bytes int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.entries), j.bytes
}

// Close wakes every waiter with ErrClosed.
func (j *Journal) Close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.closed {
		j.closed = true
		j.notify()
		j.notifyStored()
	}
}
