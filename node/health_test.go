package node

import (
	"errors"
	"testing"
	"time"

	"doppel/node/api"
)

func TestCloneStates(t *testing.T) {
	b := newHealthBook()
	t0 := time.Unix(1000, 0)
	iv := time.Second
	if v := b.view("app", "n2", 1, t0, iv, t0); v.State != api.CloneSyncing {
		t.Fatalf("before any ack: %+v", v)
	}
	b.acked("app", "n2", 1, 4096, t0)
	if v := b.view("app", "n2", 1, t0, iv, t0.Add(time.Second)); v.State != api.CloneInSync || v.LagEpochs != 0 || v.BytesSent != 4096 {
		t.Fatalf("acked newest: %+v", v)
	}
	// One epoch in flight is still in sync.
	if v := b.view("app", "n2", 2, t0, iv, t0.Add(time.Second)); v.State != api.CloneInSync || v.LagEpochs != 1 {
		t.Fatalf("one behind: %+v", v)
	}
	if v := b.view("app", "n2", 4, t0, iv, t0.Add(time.Second)); v.State != api.CloneLagging || v.LagEpochs != 3 || v.LagSeconds != 3 {
		t.Fatalf("three behind: %+v", v)
	}
	// No ack for a long time.
	if v := b.view("app", "n2", 1, t0, iv, t0.Add(10*time.Second)); v.State != api.CloneLagging {
		t.Fatalf("stale: %+v", v)
	}
	b.failed("app", "n2", errors.New("connection refused"), 100, t0.Add(2*time.Second))
	if v := b.view("app", "n2", 2, t0, iv, t0.Add(2*time.Second)); v.State != api.CloneFailed || v.LastError == "" || v.BytesSent != 4196 {
		t.Fatalf("failed: %+v", v)
	}
	b.acked("app", "n2", 2, 0, t0.Add(3*time.Second))
	if v := b.view("app", "n2", 2, t0, iv, t0.Add(3*time.Second)); v.State != api.CloneInSync || v.LastError != "" {
		t.Fatalf("recovered: %+v", v)
	}
	b.forget("app", []string{"n3"})
	if v := b.view("app", "n2", 2, t0, iv, t0); v.AckedEpoch != 0 {
		t.Fatalf("forgotten clone kept: %+v", v)
	}
}
