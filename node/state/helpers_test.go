package state

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// testTLS returns a TLS 1.3 configuration for both sides of a connection
// with a throwaway self-signed ed25519 certificate; the peer must present
// a certificate with the same public key (a stand-in for the cluster key).
func testTLS(t *testing.T) *tls.Config {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "doppel-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true, // no CA, no host names: the key is pinned below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("peer sent no certificate")
			}
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return fmt.Errorf("peer certificate: %w", err)
			}
			if k, ok := cert.PublicKey.(ed25519.PublicKey); !ok || !k.Equal(pub) {
				return errors.New("peer certificate does not carry the cluster key")
			}
			return nil
		},
	}
}

// testLog collects log output; it is printed if the test fails, or always
// with DOPPEL_TEST_LOG=1. Writes after the test ends are harmless.
type testLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// newTestLogger returns a debug-level logger into a testLog that is dumped
// when the test fails. Register it before starting clusters so the dump
// runs after their shutdown.
func newTestLogger(t *testing.T) (*slog.Logger, *testLog) {
	t.Helper()
	tl := &testLog{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("DOPPEL_TEST_LOG") == "1" {
			t.Logf("log:\n%s", tl.String())
		}
	})
	return slog.New(slog.NewTextHandler(tl, &slog.HandlerOptions{Level: slog.LevelDebug})), tl
}

// testConfig is a fast-preset node on a free loopback port.
func testConfig(t *testing.T, name string, log *slog.Logger, tlsCfg *tls.Config) Config {
	cfg := DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.NodeName = name
	cfg.Bind = "127.0.0.1:0"
	cfg.Preset = PresetFast
	cfg.Logger = log
	cfg.TLS = tlsCfg
	return cfg
}

// openTest opens a Cluster that is shut down when the test ends.
func openTest(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	c, err := Open(cfg)
	if err != nil {
		t.Fatalf("open %s: %v", cfg.NodeName, err)
	}
	t.Cleanup(func() {
		if err := c.Shutdown(); err != nil {
			t.Errorf("shutdown %s: %v", cfg.NodeName, err)
		}
	})
	return c
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitLeader waits until exactly one of cs is leader and all of cs agree on
// it, and returns it.
func waitLeader(t *testing.T, d time.Duration, cs ...*Cluster) *Cluster {
	t.Helper()
	var leader *Cluster
	waitFor(t, d, "one leader that every node knows", func() bool {
		leader = nil
		for _, c := range cs {
			if c.IsLeader() {
				if leader != nil {
					return false
				}
				leader = c
			}
		}
		if leader == nil {
			return false
		}
		for _, c := range cs {
			if name, addr := c.Leader(); name != leader.Name() || addr != leader.Addr() {
				return false
			}
		}
		return true
	})
	return leader
}

// stateJSON is a comparable form of a state.
func stateJSON(t *testing.T, s State) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitSameState waits until every node's state equals want's.
func waitSameState(t *testing.T, d time.Duration, want *Cluster, cs ...*Cluster) State {
	t.Helper()
	var st State
	waitFor(t, d, "replicated state", func() bool {
		st = want.State()
		w := stateJSON(t, st)
		for _, c := range cs {
			if stateJSON(t, c.State()) != w {
				return false
			}
		}
		return true
	})
	return st
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func testSpec(name string) *AppSpec {
	return &AppSpec{
		Name: name, Args: []string{"/bin/sleep", "1000"}, Dir: "/tmp",
		Env: []string{"A=1"}, DataPaths: []string{"/tmp/data"}, Replicas: 2,
		Interval: 5 * time.Second, InitSum: strings.Repeat("ab", 32), InitExe: "/var/lib/doppel/init",
		Service: &ServiceSpec{Listen: ":80", Target: "127.0.0.1:8080"}, Policy: PolicyFailover,
	}
}
