package peer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// handshake runs a TLS handshake between a server and a client config over
// loopback TCP and returns each side's error. The client also reads once,
// because in TLS 1.3 it learns that the server refused its certificate only
// after its own handshake has completed.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte("ok"))
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, client)
	clientErr = tc.Handshake()
	if clientErr == nil {
		buf := make([]byte, 2)
		_, clientErr = io.ReadFull(tc, buf)
		if clientErr == nil && tc.ConnectionState().Version != tls.VersionTLS13 {
			t.Errorf("negotiated TLS version %x, want 1.3", tc.ConnectionState().Version)
		}
	} else {
		c.Close()
	}
	return <-done, clientErr
}

func TestTLSHandshakeWithKey(t *testing.T) {
	k := mustKey(t)
	if s, c := handshake(t, k.TLS(), k.TLS()); s != nil || c != nil {
		t.Fatalf("same key: server %v, client %v", s, c)
	}
}

func TestTLSRefusesPeerWithoutKey(t *testing.T) {
	k, other := mustKey(t), mustKey(t)

	// Two nodes with different keys: the client, which sees the server's
	// certificate first, refuses; the server gets the alert.
	s, c := handshake(t, k.TLS(), other.TLS())
	if !errors.Is(c, ErrUnauthenticated) || s == nil {
		t.Errorf("different keys: server %v, client %v; want the client to refuse", s, c)
	}

	// A client that trusts anything but holds another key: the server
	// refuses it, the client sees the alert on its first read.
	s, c = handshake(t, k.TLS(), trustAll(other.TLS()))
	if !errors.Is(s, ErrUnauthenticated) {
		t.Errorf("server with foreign client: %v, want ErrUnauthenticated", s)
	}
	if c == nil {
		t.Error("foreign client read data from the server")
	}

	// A server that trusts anything but holds another key: the client
	// refuses it.
	s, c = handshake(t, trustAll(other.TLS()), k.TLS())
	if !errors.Is(c, ErrUnauthenticated) {
		t.Errorf("client with foreign server: %v, want ErrUnauthenticated", c)
	}
	if s == nil {
		t.Error("server completed a handshake with a client that refused it")
	}

	// A client without certificate at all.
	s, c = handshake(t, k.TLS(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if s == nil || c == nil {
		t.Errorf("client without certificate: server %v, client %v; want both to fail", s, c)
	}

	// A server with a valid but unrelated self-signed certificate.
	s, c = handshake(t, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, ClientAuth: tls.RequireAnyClientCert}, k.TLS())
	if !errors.Is(c, ErrUnauthenticated) {
		t.Errorf("client with self-signed server: %v, want ErrUnauthenticated", c)
	}
	if s == nil {
		t.Error("self-signed server completed the handshake")
	}

	// TLS 1.2 is refused even with the key.
	old := k.TLS()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if s, c := handshake(t, k.TLS(), old); s == nil || c == nil {
		t.Errorf("TLS 1.2 client: server %v, client %v; want both to fail", s, c)
	}
}

// trustAll makes cfg accept any peer certificate.
func trustAll(cfg *tls.Config) *tls.Config {
	cfg.VerifyConnection = nil
	return cfg
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "impostor"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}
