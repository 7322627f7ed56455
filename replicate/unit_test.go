package replicate

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"doppel/replicate/store"
)

// These tests need neither root nor CRIU; they run under -short and -race.

func TestValidName(t *testing.T) {
	for _, n := range []string{"a", "web-1", "db.main", "x_y", strings.Repeat("a", 63)} {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q): %v", n, err)
		}
	}
	for _, n := range []string{"", "-a", ".a", "A", "a/b", "../x", "a b", strings.Repeat("a", 64)} {
		if ValidName(n) == nil {
			t.Errorf("ValidName(%q) accepted", n)
		}
	}
}

func TestAppLock(t *testing.T) {
	dir := t.TempDir()
	a := apps{dir: filepath.Join(dir, "apps")}
	if _, err := a.lock("../evil", true); err == nil {
		t.Fatal("lock of ../evil accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, "evil")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock of a bad name created %s", filepath.Join(dir, "evil"))
	}
	if _, err := a.lock("ghost", false); !errors.Is(err, ErrNoApp) {
		t.Fatalf("lock of an unknown app: %v, want ErrNoApp", err)
	}
	if _, err := os.Stat(a.path("ghost")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("lock of an unknown app created its directory")
	}
	unlock, err := a.lock("app", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.lock("app", false); !errors.Is(err, ErrBusy) {
		t.Fatalf("second lock: %v, want ErrBusy", err)
	}
	unlock()
	unlock2, err := a.lock("app", false)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

func TestAppStateRoundTrip(t *testing.T) {
	a := apps{dir: t.TempDir()}
	st := &AppState{Spec: Spec{Name: "web", Args: []string{"x"}}, Pid: 42, PidStart: 7, Term: 3, LastEpoch: 9}
	if err := a.save(st); err != nil {
		t.Fatal(err)
	}
	got, err := a.load("web")
	if err != nil {
		t.Fatal(err)
	}
	if got.Pid != 42 || got.PidStart != 7 || got.Term != 3 || got.LastEpoch != 9 || got.Spec.Args[0] != "x" {
		t.Fatalf("round trip: %+v", got)
	}
	names, err := a.list()
	if err != nil || len(names) != 1 || names[0] != "web" {
		t.Fatalf("list: %v %v", names, err)
	}
	if _, err := a.load("nope"); !errors.Is(err, ErrNoApp) {
		t.Fatalf("load of an unknown app: %v", err)
	}
}

func TestProcessIdentity(t *testing.T) {
	if !alive(os.Getpid()) || procStart(os.Getpid()) == 0 {
		t.Fatal("this process is not alive or has no start time")
	}
	if alive(0) || alive(-1) || procStart(0) != 0 {
		t.Fatal("pid 0 is alive")
	}
	// A zombie is not alive.
	cmd := exec.Command("/bin/true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for alive(cmd.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatal("exited child still alive")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A recorded start time that does not match means another process.
	st := &AppState{Pid: os.Getpid(), PidStart: procStart(os.Getpid())}
	if !st.Running() {
		t.Fatal("Running false for this process")
	}
	st.PidStart++
	if st.Running() {
		t.Fatal("Running true for a process with another start time")
	}
	if kids := treePids(os.Getpid(), nil); len(kids) == 0 || kids[0] != os.Getpid() {
		t.Fatalf("treePids: %v", kids)
	}
	if killedPid([]int{os.Getpid()}) != 0 {
		t.Fatal("this process has a SIGKILL pending")
	}
}

func TestPhaseClock(t *testing.T) {
	var evs []Event
	c := &phaseClock{app: "a", epoch: 7, obs: func(ev Event) { evs = append(evs, ev) }}
	for _, p := range []Phase{PSB, RM} {
		c.begin(p)
		var err error
		if p == RM {
			err = errors.New("blocked")
		}
		if d := c.end(err); d <= 0 {
			t.Errorf("%s lasted %v", p, d)
		}
	}
	if len(evs) != 4 || evs[0].Phase != PSB || evs[0].End || !evs[1].End || evs[2].Phase != RM || evs[3].Err != "blocked" || evs[3].Epoch != 7 {
		t.Fatalf("events %+v", evs)
	}
	(&phaseClock{}).begin(PSB) // no observer: no panic
}

func TestCompatible(t *testing.T) {
	e := &Engine{log: slog.New(slog.DiscardHandler), kernel: "6.18.0"}
	m := &store.Manifest{App: "a", Epoch: 1, CRIUVersion: "4.2.1", Kernel: "6.18.0"}
	if err := e.compatible(m, "4.2.1", false); err != nil {
		t.Fatal(err)
	}
	m.CRIUVersion, m.Kernel = "4.1", "6.1.0"
	err := e.compatible(m, "4.2.1", false)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "4.1") || !strings.Contains(err.Error(), "6.1.0") {
		t.Fatalf("mismatch: %v", err)
	}
	if err := e.compatible(m, "4.2.1", true); err != nil {
		t.Fatalf("forced: %v", err)
	}
	if err := e.compatible(&store.Manifest{}, "4.2.1", false); err != nil {
		t.Fatalf("manifest without versions: %v", err)
	}
}

// TestVerifyImages checks that a materialised image directory is compared
// with the epoch's hashes: a flipped byte, a short file, a missing file.
func TestVerifyImages(t *testing.T) {
	dir := t.TempDir()
	pages := make([]byte, 3*store.PageSize)
	for i := range pages[:2*store.PageSize] {
		pages[i] = byte(i * 7)
	}
	blob := make([]byte, store.ChunkSize+100)
	for i := range blob {
		blob[i] = byte(i % 251)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("pages-1.img", pages)
	write("core-1.img", blob)
	images := []store.ImageFile{
		{Name: "pages-1.img", Kind: store.KindPages, Size: int64(len(pages)), Hashes: []store.Hash{
			store.Sum(pages[:4096]), store.Sum(pages[4096:8192]), store.ZeroPageHash()}},
		{Name: "core-1.img", Kind: store.KindBlob, Size: int64(len(blob)), Hashes: []store.Hash{
			store.Sum(blob[:store.ChunkSize]), store.Sum(blob[store.ChunkSize:])}},
		{Name: "parent", Kind: store.KindSymlink, Target: "../x"},
	}
	ctx := context.Background()
	if err := verifyImages(ctx, dir, images); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func()
	}{
		{"flipped page byte", func() { b := append([]byte(nil), pages...); b[5000] ^= 1; write("pages-1.img", b) }},
		{"flipped chunk byte", func() { b := append([]byte(nil), blob...); b[store.ChunkSize+3] ^= 1; write("core-1.img", b) }},
		{"short file", func() { write("core-1.img", blob[:1000]) }},
		{"missing file", func() { os.Remove(filepath.Join(dir, "pages-1.img")) }},
	} {
		tc.change()
		err := verifyImages(ctx, dir, images)
		if err == nil {
			t.Errorf("%s: not detected", tc.name)
		} else if tc.name != "missing file" && !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("%s: %v, want store.ErrCorrupt", tc.name, err)
		}
		write("pages-1.img", pages)
		write("core-1.img", blob)
	}
}

// TestEngineConcurrentUse calls the engine from many goroutines; run with
// -race it checks that its state is guarded.
func TestEngineConcurrentUse(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.WorkDir = t.TempDir()
	cfg.Store.Sync = false
	e, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	versions := make([]string, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// CRIU may be missing here: then every call fails alike.
			if _, v, err := e.criu(ctx); err == nil {
				versions[i] = v
			}
			if _, err := e.Checkpoint(ctx, "ghost", CheckpointOptions{}); !errors.Is(err, ErrNoApp) {
				t.Errorf("checkpoint of an unknown app: %v", err)
			}
			if _, err := e.Apps(); err != nil {
				t.Error(err)
			}
			if _, err := e.Epochs("ghost"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, v := range versions[1:] {
		if v != versions[0] {
			t.Fatalf("versions %v differ", versions)
		}
	}
}

func TestNewRejectsRelativeStateDir(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = "relative/dir"
	if _, err := New(cfg, nil); err == nil {
		t.Fatal("relative state directory accepted")
	}
}
