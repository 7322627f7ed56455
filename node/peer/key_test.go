package peer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustKey(t *testing.T) Key {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeyRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "cluster.key")
	k := mustKey(t)
	if k.IsZero() {
		t.Fatal("NewKey returned the zero key")
	}
	if err := k.Save(path, false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", st.Mode().Perm())
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("created parent dir: %v, mode %v, want 0700", err, st.Mode().Perm())
	}
	var logs bytes.Buffer
	got, err := LoadKey(path, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got != k {
		t.Fatal("loaded key differs from saved key")
	}
	if logs.Len() != 0 {
		t.Errorf("loading a 0600 key logged: %s", logs.String())
	}

	// No overwrite unless asked; the file keeps the first key.
	k2 := mustKey(t)
	if err := k2.Save(path, false); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("Save over existing file: %v, want ErrKeyExists", err)
	}
	if got, _ := LoadKey(path, nil); got != k {
		t.Fatal("refused Save changed the file")
	}
	if err := k2.Save(path, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := LoadKey(path, nil); got != k2 {
		t.Fatal("Save with overwrite did not replace the key")
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("key directory holds %d entries, want 1", len(ents))
	}
	if err := (Key{}).Save(filepath.Join(dir, "zero.key"), false); !errors.Is(err, ErrBadKey) {
		t.Errorf("saving the zero key: %v, want ErrBadKey", err)
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k := mustKey(t)

	_, err := LoadKey(filepath.Join(dir, "missing.key"), nil)
	if !errors.Is(err, ErrNoKey) || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "doppel init") {
		t.Errorf("missing file: %v, want ErrNoKey, fs.ErrNotExist and a hint to run doppel init", err)
	}

	cases := []struct {
		name, content, want string
	}{
		{"not-base64", "this is not base64!!", "not base64"},
		{"short", k.Encode()[:20] + "==", ""},
		{"16-bytes", "AAECAwQFBgcICQoLDA0ODw==", "16 bytes, want 32"},
		{"zero", Key{}.Encode(), "all zero"},
		{"empty", "", "0 bytes"},
		{"huge", strings.Repeat("A", 5000), "larger than"},
	}
	for _, c := range cases {
		_, err := LoadKey(write(c.name, c.content), nil)
		if !errors.Is(err, ErrBadKey) {
			t.Errorf("%s: %v, want ErrBadKey", c.name, err)
			continue
		}
		if c.want != "" && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q does not say %q", c.name, err, c.want)
		}
	}
	if _, err := LoadKey(dir, nil); !errors.Is(err, ErrBadKey) {
		t.Errorf("directory: %v, want ErrBadKey", err)
	}

	// White space around the key and unpadded base64 are accepted.
	p := write("spaces", "\n  "+k.Encode()+"  \n\n")
	if got, err := LoadKey(p, nil); err != nil || got != k {
		t.Errorf("key with spaces: %v", err)
	}
	p = write("raw", strings.TrimRight(k.Encode(), "="))
	if got, err := LoadKey(p, nil); err != nil || got != k {
		t.Errorf("unpadded key: %v", err)
	}
}

func TestLoadKeyWarnsOnLoosePermissions(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cluster.key")
	k := mustKey(t)
	if err := k.Save(p, false); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	got, err := LoadKey(p, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil || got != k {
		t.Fatalf("LoadKey of a 0644 key: %v", err)
	}
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "chmod 600 "+p) || !strings.Contains(out, "mode=0644") {
		t.Errorf("warning missing or unhelpful: %q", out)
	}
}

func TestKeyDerivation(t *testing.T) {
	k := mustKey(t)
	g := k.GossipKey()
	if len(g) != 32 {
		t.Fatalf("gossip key is %d bytes", len(g))
	}
	if !bytes.Equal(g, k.GossipKey()) {
		t.Error("gossip key is not deterministic")
	}
	if bytes.Equal(g, k[:]) {
		t.Error("gossip key equals the cluster key")
	}
	tlsSeed := k.derive(infoTLS, 32)
	if bytes.Equal(g, tlsSeed) {
		t.Error("gossip key equals the TLS seed")
	}
	k2 := mustKey(t)
	if bytes.Equal(g, k2.GossipKey()) {
		t.Error("two keys give one gossip key")
	}
	if k.Fingerprint() == k2.Fingerprint() || len(k.Fingerprint()) != 16 {
		t.Errorf("fingerprints %q %q", k.Fingerprint(), k2.Fingerprint())
	}
	// RFC 5869 output for a known key stays stable across releases: a
	// change here would split mixed-version clusters.
	var fixed Key
	for i := range fixed {
		fixed[i] = byte(i)
	}
	if got := fmt.Sprintf("%x", fixed.GossipKey()[:8]); got != knownGossipPrefix {
		t.Errorf("gossip key of the fixed key starts %s, want %s", got, knownGossipPrefix)
	}

	// Printing a key never shows the secret.
	secret := k.Encode()
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "key", k)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %s %#v", k, k, k), logs.String()} {
		if strings.Contains(s, secret) || strings.Contains(s, fmt.Sprint([32]byte(k))) {
			t.Errorf("key printed in clear: %s", s)
		}
		if !strings.Contains(s, k.Fingerprint()) {
			t.Errorf("printed key lacks its fingerprint: %s", s)
		}
	}
}

// knownGossipPrefix is HKDF-SHA256(ikm=00..1f, salt=none, info="doppel
// gossip v1") truncated to 8 bytes, per RFC 5869.
const knownGossipPrefix = "5983f0739d104bce" // computed independently with Python hmac

func TestKeyTLSIsDeterministic(t *testing.T) {
	k := mustKey(t)
	a, b := k.TLS(), k.TLS()
	if len(a.Certificates) != 1 || len(b.Certificates) != 1 {
		t.Fatal("TLS config lacks its certificate")
	}
	if !bytes.Equal(a.Certificates[0].Certificate[0], b.Certificates[0].Certificate[0]) {
		t.Error("certificate differs between two calls")
	}
	if c := mustKey(t).TLS(); bytes.Equal(a.Certificates[0].Certificate[0], c.Certificates[0].Certificate[0]) {
		t.Error("two keys give one certificate")
	}
}
