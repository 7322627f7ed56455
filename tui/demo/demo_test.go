package demo

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"doppel/node/peer"
)

// The whole demo (nodes, app, failure, cleanup) is tested end to end by
// the tests of package tui, which run the binary; these test its parts.

func TestPortsFreeSeesTakenPorts(t *testing.T) {
	ps, err := freePorts("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if ps[0] == ps[1] || ps[1] == ps[2] || ps[0] == ps[2] {
		t.Errorf("ports %v not distinct", ps)
	}
	if !portsFree("127.0.0.1", ps) {
		t.Fatalf("fresh ports %v not free", ps)
	}
	// The gossip port taken for UDP only.
	u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ps[0])))
	if err != nil {
		t.Fatal(err)
	}
	if portsFree("127.0.0.1", ps) {
		t.Error("a gossip port taken for UDP counted as free")
	}
	u.Close()
	// The peer port taken for TCP.
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ps[2])))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if portsFree("127.0.0.1", ps) {
		t.Error("a peer port taken for TCP counted as free")
	}
}

func TestWriteConfig(t *testing.T) {
	c := &Cluster{cfg: DefaultConfig("/bin/true"), dir: t.TempDir()}
	c.cfg.CRIUPath = "/opt/criu/bin/criu"
	cfgFile, keyFile, err := c.writeConfig()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"key_file: " + keyFile, "preset: fast", "path: /opt/criu/bin/criu"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %q:\n%s", want, b)
		}
	}
	if _, err := peer.LoadKey(keyFile, nil); err != nil {
		t.Errorf("the key does not load: %v", err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v", fi.Mode(), err)
	}
}

func TestTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("a\nb\nc\nd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := tail(p, 2); got != "c\nd" {
		t.Errorf("tail = %q", got)
	}
}
