package tui

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"charm.land/bubbles/v2/key"
	"github.com/charmbracelet/x/exp/teatest/v2"

	"doppel/node/api"
	"doppel/node/api/apitest"
)

// daemon serves an apitest.Fake on a unix socket, as a node does.
type daemon struct {
	fake   *apitest.Fake
	socket string
	srv    *api.Server
	done   chan error
}

func startDaemon(t *testing.T, fake *apitest.Fake, socket string) *daemon {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Heartbeat = 200 * time.Millisecond
	d := &daemon{fake: fake, socket: socket, srv: api.NewServer(fake, cfg), done: make(chan error, 1)}
	go func() { d.done <- d.srv.Serve(socket) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := api.NewClient(socket).WaitReady(ctx); err != nil {
		t.Fatalf("fake daemon: %v", err)
	}
	t.Cleanup(func() { d.stop(t) })
	return d
}

func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if err := <-d.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("serve: %v", err)
	}
	d.srv = nil
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dptui")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestAgainstTheAPI runs the dashboard with the real client against the
// local API served from a fake backend: it loads, follows events, runs a
// checkpoint, and survives the daemon going away and coming back.
func TestAgainstTheAPI(t *testing.T) {
	t.Parallel()
	socket := filepath.Join(shortDir(t), "api.sock")
	fake := apitest.NewFake("n1")
	ctx := context.Background()
	if _, err := fake.Run(ctx, api.RunRequest{Name: "kv", Args: []string{"kv"}, Replicas: 1, Interval: api.Duration(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if _, err := fake.Checkpoint(ctx, "kv"); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, fake, socket)

	cfg := DefaultConfig(socket)
	cfg.NoColor = true
	cfg.ReconnectMin, cfg.ReconnectMax = 20*time.Millisecond, 100*time.Millisecond
	tm := program(t, cfg, 80, 24)
	waitScreen(t, tm, "kv with epoch #1", func(s string) bool {
		return strings.Contains(s, "connected") && strings.Contains(s, "kv") && strings.Contains(s, "#1")
	})

	// Events from the daemon reach the log.
	fake.Publish(api.Event{Kind: api.KindMember, Node: "n2", Message: "n2 is join"})
	keys(tm, "5")
	waitScreen(t, tm, "the join", func(s string) bool { return strings.Contains(s, "n2 joined") })

	// A checkpoint through the API: a new epoch, shown as the result.
	keys(tm, "2", "c", "y")
	waitScreen(t, tm, "the checkpoint's result", func(s string) bool { return strings.Contains(s, "epoch #2") })
	waitScreen(t, tm, "epoch #2 in the list", func(s string) bool { return strings.Contains(s, "#2 ") })

	// The daemon goes away: the dashboard says so and keeps the data.
	d.stop(t)
	waitScreen(t, tm, "the disconnection", func(s string) bool {
		return strings.Contains(s, "disconnected") && strings.Contains(s, "reconnecting") && strings.Contains(s, "kv")
	})
	// It comes back (a restarted daemon): the dashboard reconnects by itself.
	startDaemon(t, fake, socket)
	waitScreen(t, tm, "the reconnection", func(s string) bool {
		return strings.Contains(s, "connected") && !strings.Contains(s, "disconnected")
	})
	fake.Publish(api.Event{Kind: api.KindMember, Node: "n3", Message: "n3 is join"})
	keys(tm, "5")
	waitScreen(t, tm, "an event after the restart", func(s string) bool { return strings.Contains(s, "n3 joined") })
}

// TestNoDaemon shows how to start one when nothing answers.
func TestNoDaemon(t *testing.T) {
	t.Parallel()
	socket := filepath.Join(shortDir(t), "none.sock")
	cfg := DefaultConfig(socket)
	cfg.NoColor = true
	tm := program(t, cfg, 80, 24)
	waitScreen(t, tm, "the missing daemon", func(s string) bool {
		return strings.Contains(s, "disconnected") && strings.Contains(s, "no doppel daemon at")
	})
	var _ teatest.Program = tm.GetProgram()
}

func TestKeyMapHelp(t *testing.T) {
	t.Parallel()
	km := DefaultKeyMap()
	h := helpKeys{km: km, pane: []key.Binding{km.Verbose}, actions: []key.Binding{km.Checkpoint}}
	short := h.ShortHelp()
	if len(short) < 4 || short[0].Help().Key != "tab" || short[len(short)-1].Help().Key != "q" {
		t.Errorf("short help %v", short)
	}
	full := h.FullHelp()
	if len(full) != 4 {
		t.Fatalf("%d columns of full help", len(full))
	}
	// Every key does one thing, but esc, which also cancels a
	// confirmation (a mode of its own).
	seen := map[string]bool{}
	for _, col := range full {
		for _, b := range col {
			if b.Help().Desc == km.Cancel.Help().Desc {
				continue
			}
			for _, k := range b.Keys() {
				if seen[k] {
					t.Errorf("key %q bound twice in the help", k)
				}
				seen[k] = true
			}
		}
	}
	for _, k := range []string{"up", "k", "down", "j", "tab", "/", "esc", "?", "q", "c", "y", "v"} {
		if !seen[k] {
			t.Errorf("full help lacks %q", k)
		}
	}
}
