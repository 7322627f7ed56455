package criu

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNotifierRecordsAndCallsHooks(t *testing.T) {
	var got []string
	var restoredPid int
	h := Hooks{
		PreDump:  func() error { got = append(got, "pre"); time.Sleep(2 * time.Millisecond); return nil },
		PostDump: func() error { got = append(got, "post"); return nil },
		PostRestore: func(pid int) error {
			restoredPid = pid
			return nil
		},
	}
	n := newNotifier(context.Background(), h, time.Now())
	for _, f := range []func() error{n.PreDump, n.NetworkLock, n.PostDump, n.NetworkUnlock, n.PreRestore, n.PostSetupNamespaces, n.PostResume} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.SetupNamespaces(9); err != nil {
		t.Fatal(err)
	}
	if err := n.PostRestore(1234); err != nil {
		t.Fatal(err)
	}
	ev, pid, err := n.result()
	if err != nil || pid != 1234 || restoredPid != 1234 {
		t.Fatalf("pid %d hook pid %d err %v", pid, restoredPid, err)
	}
	if len(got) != 2 || got[0] != "pre" || got[1] != "post" {
		t.Fatalf("hooks called %v", got)
	}
	want := []string{EventPreDump, EventNetworkLock, EventPostDump, EventNetworkUnlock, EventPreRestore,
		EventPostSetupNamespaces, EventPostResume, EventSetupNamespaces, EventPostRestore}
	if len(ev) != len(want) {
		t.Fatalf("events %+v", ev)
	}
	for i, e := range ev {
		if e.Name != want[i] {
			t.Fatalf("event %d is %s, want %s", i, e.Name, want[i])
		}
		if i > 0 && e.At < ev[i-1].At {
			t.Fatalf("events out of order: %+v", ev)
		}
	}
	if ev[0].Hook < 2*time.Millisecond {
		t.Fatalf("pre-dump hook time %v, want >= 2ms", ev[0].Hook)
	}
	if d, ok := ev.Between(EventPreDump, EventPostDump); !ok || d < 2*time.Millisecond {
		t.Fatalf("Between = %v, %v", d, ok)
	}
	if _, ok := ev.Between(EventPostDump, EventPreDump); ok {
		t.Fatal("Between accepted a reversed pair")
	}
	if _, ok := ev.At("lazy-pages"); ok {
		t.Fatal("At found a missing event")
	}
}

func TestNotifierAborts(t *testing.T) {
	boom := errors.New("boom")
	n := newNotifier(context.Background(), Hooks{PreDump: func() error { return boom }}, time.Now())
	if err := n.PreDump(); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, _, err := n.result(); !errors.Is(err, boom) {
		t.Fatalf("hook error not kept: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	called := false
	n = newNotifier(ctx, Hooks{PostDump: func() error { called = true; return nil }}, time.Now())
	if err := n.PreDump(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := n.PostDump(); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context did not abort: %v", err)
	}
	if called {
		t.Fatal("hook called after cancellation")
	}
	if _, _, err := n.result(); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancellation not kept: %v", err)
	}
}

func TestDumpResultPhases(t *testing.T) {
	r := DumpResult{
		Wall:   100 * time.Millisecond,
		Stats:  DumpStats{FreezingTime: 3 * time.Millisecond},
		Events: Events{{Name: EventPreDump, At: 40 * time.Millisecond}, {Name: EventPostDump, At: 90 * time.Millisecond}},
	}
	if r.Setup() != 40*time.Millisecond || r.Barrier() != 43*time.Millisecond ||
		r.Capture() != 50*time.Millisecond || r.Finish() != 10*time.Millisecond {
		t.Fatalf("setup %v barrier %v capture %v finish %v", r.Setup(), r.Barrier(), r.Capture(), r.Finish())
	}
	var empty DumpResult
	if empty.Barrier() != 0 || empty.Finish() != 0 || empty.Capture() != 0 {
		t.Fatal("phases of a result without events")
	}
}
