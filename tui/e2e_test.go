package tui_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"doppel/node/api"
	"doppel/node/api/apitest"
)

// TestDemoInTmux drives the real binary in tmux: `doppel demo` starts a
// 3-node cluster with the sample app, and the dashboard must show the
// checkpoint bars, the epochs and their acknowledgements; a simulated
// failure of the app's node must leave the app running on a survivor
// (promoted by the cluster, or restored from the dashboard); quitting
// must stop everything and remove the demo's directory.
//
// It needs root, CRIU (scripts/setup.sh) and tmux (scripts/setup.sh
// --test); it skips without them only when CI is unset.
func TestDemoInTmux(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds doppel and runs a 3-node cluster in tmux (skipped with -short)")
	}
	requireTmux(t)
	requireRootAndCRIU(t)

	bin := buildDoppel(t)
	// Everything the demo creates goes under tmp; the socket paths must
	// stay short.
	tmp, err := os.MkdirTemp("", "dpe2e")
	if err != nil {
		t.Fatal(err)
	}
	s := &tmuxSession{t: t, server: "doppel-e2e-" + strconv.Itoa(os.Getpid()), name: "demo"}
	t.Cleanup(func() {
		s.stop()
		killUnder(t, tmp)
		os.RemoveAll(tmp)
	})
	s.start(80, 24, tmp, fmt.Sprintf("%s demo; echo \"EXITED rc=$?\"; sleep 600", bin))

	// The cluster starts and the dashboard attaches to n1.
	s.wait("the dashboard attached to n1 with kv running", 120*time.Second, func(sc string) bool {
		return strings.Contains(sc, "● n1") && strings.Contains(sc, "connected") && strings.Contains(sc, "kv running on n1")
	})

	// Checkpoint phases: bars with the capture and the transfer, an epoch
	// acknowledged by both clones.
	s.keys("4")
	bar := regexp.MustCompile(`#\d+ ▕[▓▒░]*█+[=\-]+`)
	sc := s.wait("a checkpoint bar with its transfer and acks", 60*time.Second, func(sc string) bool {
		return bar.MatchString(sc) && regexp.MustCompile(`sent n\d [^·]*✓ · n\d [^·]*✓`).MatchString(sc)
	})
	t.Logf("checkpoints at 80×24:\n%s", sc)

	// The log, with epochs and acks shown.
	s.keys("5", "v")
	s.wait("an epoch and an acknowledgement in the log", 30*time.Second, func(sc string) bool {
		return regexp.MustCompile(`epoch\s+(\[[^]]*\] )?epoch \d+:`).MatchString(sc) &&
			regexp.MustCompile(`ack\s+(\[[^]]*\] )?n[23] acknowledged epoch \d+`).MatchString(sc)
	})

	// Apps pane: a simulated failure of kv's node.
	s.keys("2", "x")
	s.wait("the confirmation", 10*time.Second, func(sc string) bool {
		return strings.Contains(sc, "simulate a failure of n1") && strings.Contains(sc, "[y/N]")
	})
	s.keys("y")
	sc = s.wait("the failure and the attachment to a survivor", 60*time.Second, func(sc string) bool {
		return strings.Contains(sc, "n1 killed") && regexp.MustCompile(`● n[23]`).MatchString(sc)
	})
	t.Logf("after the failure:\n%s", sc)
	// Either the cluster promotes a clone by itself, or the operator
	// restores on the node attached to, which holds a clone.
	running := regexp.MustCompile(`kv running on n[23]`)
	if s.waitMaybe(30*time.Second, func(sc string) bool { return running.MatchString(sc) }) {
		t.Log("the cluster promoted a clone by itself")
	} else {
		t.Log("no promotion within 30s: restoring from the dashboard")
		s.keys("r")
		s.wait("the restore confirmation", 10*time.Second, func(sc string) bool { return strings.Contains(sc, "[y/N]") })
		s.keys("y")
	}
	sc = s.wait("kv running on a survivor", 90*time.Second, func(sc string) bool { return running.MatchString(sc) })
	t.Logf("kv on a survivor:\n%s", sc)
	// It is checkpointed there again, to the remaining clone.
	s.keys("4")
	s.wait("checkpoints on the survivor", 60*time.Second, func(sc string) bool { return bar.MatchString(sc) })
	s.keys("2")
	sc = s.wait("the remaining clone in sync", 60*time.Second, func(sc string) bool {
		return regexp.MustCompile(`clone n[23]\s+in-sync`).MatchString(sc)
	})
	from := regexp.MustCompile(`kv running on (n[23])`).FindStringSubmatch(sc)[1]
	to := map[string]string{"n2": "n3", "n3": "n2"}[from]

	// Maintenance by hand: stop kv, attach to the other node, restore it
	// there from its clone.
	s.keys("s")
	s.wait("the stop confirmation", 10*time.Second, func(sc string) bool { return strings.Contains(sc, "stop kv on "+from) })
	s.keys("y")
	s.wait("kv stopped", 30*time.Second, func(sc string) bool { return strings.Contains(sc, "kv stopped") })
	s.keys("1", "G")
	if to == "n2" {
		s.keys("k")
	}
	s.keys("a")
	s.wait("the dashboard attached to "+to, 30*time.Second, func(sc string) bool {
		return strings.Contains(sc, "● "+to+" ") && strings.Contains(sc, "connected")
	})
	s.keys("2", "r")
	s.wait("the restore confirmation", 10*time.Second, func(sc string) bool {
		return strings.Contains(sc, "restore kv here on "+to) && strings.Contains(sc, "[y/N]")
	})
	s.keys("y")
	sc = s.wait("kv running on "+to, 90*time.Second, func(sc string) bool { return strings.Contains(sc, "kv running on "+to) })
	t.Logf("kv restored by hand on %s:\n%s", to, sc)
	s.keys("4")
	s.wait("checkpoints on "+to, 60*time.Second, func(sc string) bool { return bar.MatchString(sc) })

	// Quit: everything stops and the directory goes.
	s.keys("q")
	s.wait("the demo's exit", 90*time.Second, func(sc string) bool { return strings.Contains(sc, "EXITED rc=") })
	full := s.capture(true)
	if !strings.Contains(full, "EXITED rc=0") {
		t.Errorf("the demo failed:\n%s", full)
	}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		t.Errorf("left behind: %s", filepath.Join(tmp, e.Name()))
	}
	// Processes killed at the end may take a moment to go.
	deadline := time.Now().Add(10 * time.Second)
	for len(processesUnder(tmp)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, pid := range processesUnder(tmp) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		t.Errorf("process left running: %d %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
	}
}

// require skips the test when ok is false, or fails it in CI (CI set),
// which must provide every prerequisite.
func require(t *testing.T, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI must provide it)", why)
	}
	t.Skip(why)
}

func requireTmux(t *testing.T) {
	t.Helper()
	_, err := exec.LookPath("tmux")
	require(t, err == nil, "tmux is not installed (sudo scripts/setup.sh --test installs it)")
}

func requireRootAndCRIU(t *testing.T) {
	t.Helper()
	require(t, os.Geteuid() == 0, "doppel demo needs root (run the tests as root: sudo scripts/test.sh)")
	require(t, haveCRIU(), "no CRIU (sudo scripts/setup.sh installs one)")
}

func haveCRIU() bool {
	if _, err := os.Stat("/usr/local/lib/doppel/criu/bin/criu"); err == nil {
		return true
	}
	_, err := exec.LookPath("criu")
	return err == nil
}

// buildDoppel builds the binary from the module's root.
func buildDoppel(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "doppel")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return bin
}

// tmuxSession is one session on a private tmux server.
type tmuxSession struct {
	t      *testing.T
	server string
	name   string
}

func (s *tmuxSession) tmux(args ...string) (string, error) {
	cmd := exec.Command("tmux", append([]string{"-L", s.server}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (s *tmuxSession) start(w, h int, tmp, command string) {
	s.t.Helper()
	out, err := s.tmux("new-session", "-d", "-s", s.name, "-x", strconv.Itoa(w), "-y", strconv.Itoa(h),
		"-e", "TMPDIR="+tmp, "-e", "TERM=xterm-256color", command)
	if err != nil {
		s.t.Fatalf("tmux new-session: %v: %s", err, out)
	}
}

func (s *tmuxSession) keys(ks ...string) {
	s.t.Helper()
	for _, k := range ks {
		if out, err := s.tmux("send-keys", "-t", s.name, k); err != nil {
			s.t.Fatalf("tmux send-keys %s: %v: %s", k, err, out)
		}
		time.Sleep(50 * time.Millisecond) // keys typed, not pasted
	}
}

// capture returns the screen (history too when all).
func (s *tmuxSession) capture(all bool) string {
	args := []string{"capture-pane", "-p", "-t", s.name}
	if all {
		args = append(args, "-S", "-")
	}
	out, err := s.tmux(args...)
	if err != nil {
		s.t.Fatalf("tmux capture-pane: %v: %s", err, out)
	}
	return out
}

// waitMaybe polls the screen until ok or the timeout.
func (s *tmuxSession) waitMaybe(timeout time.Duration, ok func(string) bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ok(s.capture(false)) {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// wait polls the screen until ok, failing the test at the timeout.
func (s *tmuxSession) wait(what string, timeout time.Duration, ok func(string) bool) string {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var sc string
	for time.Now().Before(deadline) {
		sc = s.capture(false)
		if ok(sc) {
			return sc
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("no %s within %s; screen:\n%s", what, timeout, sc)
	return ""
}

// stop quits the demo if it still runs (so that it cleans up), then ends
// the tmux server.
func (s *tmuxSession) stop() {
	if _, err := s.tmux("has-session", "-t", s.name); err == nil {
		if !strings.Contains(s.capture(false), "EXITED rc=") {
			s.tmux("send-keys", "-t", s.name, "q")
			if !s.waitMaybe(60*time.Second, func(sc string) bool { return strings.Contains(sc, "EXITED rc=") }) {
				s.t.Logf("the demo did not quit; screen:\n%s", s.capture(true))
			}
		}
	}
	s.tmux("kill-server")
}

// processesUnder lists the processes whose command line names a path
// under dir (the demo's nodes, their apps and inits; not the tmux server,
// which names dir itself).
func processesUnder(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killUnder kills what a failed test left running.
func killUnder(t *testing.T, dir string) {
	for _, pid := range processesUnder(dir) {
		t.Logf("killing leftover process %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// TestTUICommandInTmux runs `doppel tui` and `doppel` without a command,
// in tmux, against a daemon's API served from a fake backend: the
// dashboard shows the cluster, logs to its file and never to the screen,
// and quits on q. It needs tmux only.
func TestTUICommandInTmux(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds doppel and runs it in tmux (skipped with -short)")
	}
	requireTmux(t)
	bin := buildDoppel(t)
	dir, err := os.MkdirTemp("", "dptui")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "api.sock")
	fake := apitest.NewFake("n1")
	if _, err := fake.Run(context.Background(), api.RunRequest{Name: "kv", Args: []string{"kv"}, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(fake, api.DefaultConfig())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(socket) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := api.NewClient(socket).WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	for i, args := range []string{"tui --log-file " + filepath.Join(dir, "tui.log"), ""} {
		s := &tmuxSession{t: t, server: fmt.Sprintf("doppel-tui-%d-%d", os.Getpid(), i), name: "tui"}
		t.Cleanup(s.stop)
		// Without a command, the dashboard logs to its default file.
		s.start(80, 24, dir, fmt.Sprintf("HOME=%s XDG_CACHE_HOME=%s %s --socket %s --log-level debug %s; echo \"EXITED rc=$?\"; sleep 600",
			dir, filepath.Join(dir, "cache"), bin, socket, args))
		s.wait("the dashboard", 30*time.Second, func(sc string) bool {
			return strings.Contains(sc, "connected") && strings.Contains(sc, "kv running on n1")
		})
		fake.Publish(api.Event{Kind: api.KindMember, Node: "n2", Message: "n2 is join"})
		s.keys("5")
		s.wait("the event", 10*time.Second, func(sc string) bool { return strings.Contains(sc, "n2 joined") })
		s.keys("q")
		s.wait("the exit", 10*time.Second, func(sc string) bool { return strings.Contains(sc, "EXITED rc=") })
		full := s.capture(true)
		if !strings.Contains(full, "EXITED rc=0") || strings.Contains(full, "level=") || strings.Contains(full, "msg=") {
			t.Errorf("doppel %s: exit or log on the screen:\n%s", args, full)
		}
		log := filepath.Join(dir, "tui.log")
		if args == "" {
			log = filepath.Join(dir, "cache", "doppel", "tui.log")
		}
		b, err := os.ReadFile(log)
		if err != nil || !strings.Contains(string(b), "attached") {
			t.Errorf("doppel %s: log %s: %v\n%s", args, log, err, b)
		}
	}
}

// TestDemoHeadless runs `doppel demo --no-tui` until its status lines show
// epochs acknowledged by both clones, then interrupts it as Ctrl-C does:
// it must exit 0 having stopped everything and removed its directory.
// Like TestDemoInTmux it needs root and CRIU.
func TestDemoHeadless(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds doppel and runs a 3-node cluster (skipped with -short)")
	}
	requireRootAndCRIU(t)
	bin := buildDoppel(t)
	tmp, err := os.MkdirTemp("", "dpe2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killUnder(t, tmp)
		os.RemoveAll(tmp)
	})
	cmd := exec.Command(bin, "demo", "--no-tui", "--every", "500ms")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
			}
		}
	})
	// Both clones in sync, in whichever order placement listed them.
	synced := regexp.MustCompile(`kv running on n1 term 1 epoch #([2-9]|\d\d+) .*clones (n2 in-sync #\d+, n3|n3 in-sync #\d+, n2) in-sync #\d+`)
	deadline := time.After(120 * time.Second)
	var seen []string
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended early: %v\nstdout:\n%s\nstderr:\n%s", <-exited, strings.Join(seen, "\n"), stderr.String())
			}
			seen = append(seen, l)
			if synced.MatchString(l) {
				t.Logf("status line: %s", l)
				break wait
			}
		case <-deadline:
			t.Fatalf("no epoch acknowledged by both clones within 120s:\n%s\nstderr:\n%s", strings.Join(seen, "\n"), stderr.String())
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines {
		}
	}()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("demo: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("the demo did not stop within 90s of Ctrl-C; stderr:\n%s", stderr.String())
	}
	for _, want := range []string{"stopping app kv", "stopping node n1", "stopping node n3"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		t.Errorf("left behind: %s", filepath.Join(tmp, e.Name()))
	}
	deadlineP := time.Now().Add(10 * time.Second)
	for len(processesUnder(tmp)) > 0 && time.Now().Before(deadlineP) {
		time.Sleep(50 * time.Millisecond)
	}
	if pids := processesUnder(tmp); len(pids) > 0 {
		t.Errorf("processes left running: %v", pids)
	}
}
