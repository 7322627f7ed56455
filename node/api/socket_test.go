package api_test

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"doppel/node/api"
)

func TestSocketModes(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	fi, err := os.Lstat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(d.socket))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("created socket directory mode %v, want 0700", di.Mode().Perm())
	}
}

// TestSecondServerRefused: a second Serve on the socket of a live server
// fails with ErrDaemonRunning and leaves the first one serving.
func TestSecondServerRefused(t *testing.T) {
	d := startDaemon(t, newFake(), testConfig(t))
	err := api.NewServer(newFake(), testConfig(t)).Serve(d.socket)
	if !errors.Is(err, api.ErrDaemonRunning) {
		t.Fatalf("second Serve: %v, want ErrDaemonRunning", err)
	}
	if want := "another doppel node is running on " + d.socket; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start with %q", err, want)
	}
	if _, err := d.client.Status(ctxT(t)); err != nil {
		t.Errorf("first server after the refused second: %v", err)
	}
}

// TestLiveSocketWithoutLock: a process that answers on the socket without
// holding the lock (another build, another tool) is detected by dialling.
func TestLiveSocketWithoutLock(t *testing.T) {
	sock := filepath.Join(socketDir(t), "doppel.sock")
	other, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	_, err = api.Listen(sock)
	if !errors.Is(err, api.ErrDaemonRunning) {
		t.Fatalf("Listen on a live socket: %v, want ErrDaemonRunning", err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("live socket removed: %v", err)
	}
}

// TestStaleSocketRemoved: a socket file nothing listens on is replaced.
func TestStaleSocketRemoved(t *testing.T) {
	sock := filepath.Join(socketDir(t), "doppel.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	_, err = api.NewClient(sock).Status(ctxT(t))
	if !errors.Is(err, api.ErrNoDaemon) {
		t.Fatalf("Status on a stale socket: %v, want ErrNoDaemon", err)
	}

	srv := api.NewServer(newFake(), testConfig(t))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sock) }()
	c := api.NewClient(sock)
	defer c.Close()
	if err := c.WaitReady(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Shutdown(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// The lock is released with the listener: the socket can be served
	// again at once.
	ln2, err := api.Listen(sock)
	if err != nil {
		t.Fatalf("Listen after Shutdown: %v", err)
	}
	ln2.Close()
}

func TestSocketNotASocket(t *testing.T) {
	path := filepath.Join(socketDir(t), "doppel.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := api.Listen(path)
	if err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("Listen on a regular file: %v, want \"is not a socket\"", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
		t.Errorf("regular file touched: %q, %v", b, err)
	}
}

func TestSocketPathTooLong(t *testing.T) {
	path := "/tmp/" + strings.Repeat("d", 120) + "/doppel.sock"
	_, err := api.Listen(path)
	if err == nil || !strings.Contains(err.Error(), "at most 107") {
		t.Fatalf("Listen on a long path: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); err == nil {
		os.RemoveAll(filepath.Dir(path))
		t.Errorf("directory created for an unusable path")
	}
}

func TestListenerCloseRemovesSocket(t *testing.T) {
	sock := filepath.Join(socketDir(t), "x", "y", "doppel.sock")
	ln, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.Listen(sock); !errors.Is(err, api.ErrDaemonRunning) {
		t.Errorf("second Listen while the first holds the lock: %v, want ErrDaemonRunning", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ln.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after Close: %v, want removed", err)
	}
}
