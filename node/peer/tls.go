package peer

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ErrUnauthenticated is wrapped by handshake errors with a peer that does not
// hold this node's cluster key (in either direction).
var ErrUnauthenticated = errors.New("peer does not hold this cluster's key")

// identity is the TLS identity derived from a key.
type identity struct {
	pub  ed25519.PublicKey
	cert tls.Certificate
	err  error
}

// identity derives the ed25519 key pair (seed = HKDF info "doppel tls v1")
// and a self-signed certificate for it. Ed25519 signatures are deterministic
// and the template is fixed, so the certificate is the same bytes on every
// node of the cluster.
func (k Key) identity() identity {
	priv := ed25519.NewKeyFromSeed(k.derive(infoTLS, ed25519.SeedSize))
	pub := priv.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "doppel cluster"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return identity{pub: pub, err: fmt.Errorf("peer: TLS certificate from cluster key: %w", err)}
	}
	return identity{pub: pub, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}}
}

// TLS returns a fresh TLS 1.3-only configuration, usable by both clients and
// servers (raft's stream layer, the peer Transport), whose only trust is the
// key: each side presents the certificate derived from the key and accepts a
// peer only if the peer's certificate carries that same ed25519 public key
// (the handshake's CertificateVerify proves the peer holds the private half).
// There is no CA and no host name check; ServerName is irrelevant. A peer
// without the key fails the handshake on both sides with an error wrapping
// ErrUnauthenticated locally and a "bad certificate" alert remotely. Session
// tickets are disabled so every connection proves the key afresh. Callers may
// set NextProtos and other fields on the returned copy.
func (k Key) TLS() *tls.Config {
	id := k.identity()
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		ClientAuth:             tls.RequireAnyClientCert,
		InsecureSkipVerify:     true, // chain and name checks replaced by VerifyConnection
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeer(id.pub, cs)
		},
	}
	if id.err != nil {
		fail := func() error { return id.err }
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, fail() }
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, fail() }
		return cfg
	}
	cfg.Certificates = []tls.Certificate{id.cert}
	return cfg
}

// verifyPeer accepts a connection only if the peer's leaf certificate holds
// want.
func verifyPeer(want ed25519.PublicKey, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: peer sent no certificate", ErrUnauthenticated)
	}
	got, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return fmt.Errorf("%w: peer certificate has a %T key, want ed25519", ErrUnauthenticated, cs.PeerCertificates[0].PublicKey)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: peer certificate is from another cluster key (check the key file on both nodes)", ErrUnauthenticated)
	}
	return nil
}
