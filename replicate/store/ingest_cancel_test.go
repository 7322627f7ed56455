package store

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"doppel/replicate/store/storetest"
)

// An ingest cancelled while its hashing workers wait for buffers returns
// (it once waited for them forever), and the transaction can be aborted.
func TestIngestCancelledReturns(t *testing.T) {
	for _, workers := range []int{1, 2, 4} {
		cfg := DefaultConfig()
		cfg.Workers = workers
		cfg.Sync = false
		s := openStore(t, cfg)
		dir := t.TempDir()
		if err := storetest.SimpleImage(storetest.Memory(7, 16384)).Write(dir); err != nil {
			t.Fatal(err)
		}
		tx, err := s.Begin("cancel", 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		ctx := &lateCancel{Context: context.Background()}
		done := make(chan error, 1)
		go func() { done <- tx.AddImageDir(ctx, dir) }()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("workers %d: AddImageDir = %v, want context.Canceled", workers, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("workers %d: a cancelled ingest did not return", workers)
		}
		tx.Abort()
	}
}

// lateCancel is a context that reads as live until something waits on it,
// and cancelled from then on: the ingest starts its workers, then finds the
// context ended at its first wait.
type lateCancel struct {
	context.Context
	waited atomic.Bool
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *lateCancel) Done() <-chan struct{} {
	c.waited.Store(true)
	return closedChan
}

func (c *lateCancel) Err() error {
	if c.waited.Load() {
		return context.Canceled
	}
	return nil
}
