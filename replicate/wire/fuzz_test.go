package wire

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"doppel/replicate/store"
)

// FuzzDecodeFrame feeds arbitrary bytes to the frame reader and the
// payload decoders. They must return errors, never panic or allocate
// beyond the frame bounds. The seed corpus (testdata/fuzz) holds real
// streams of a full and an incremental epoch.
func FuzzDecodeFrame(f *testing.F) {
	f.Add([]byte{})
	f.Add(append(magic[:], 1, 0, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		if readPreamble(r) != nil {
			r = bytes.NewReader(data)
		}
		fr := &frameReader{r: r}
		for range 64 {
			fr0, err := fr.read()
			if err != nil {
				return
			}
			if len(fr0.payload) > MaxFrame {
				t.Fatalf("payload of %d bytes", len(fr0.payload))
			}
			switch fr0.t {
			case MsgHello:
				_, _ = decodeHello(fr0.payload)
			case MsgEnd, MsgWantEnd:
				_, _ = decodeUvarints("x", fr0.payload, 2)
			case MsgAck:
				_, _ = decodeUvarints("x", fr0.payload, 1)
			case MsgMeta:
				var ep store.Epoch
				_ = ep.UnmarshalBinary(fr0.payload)
				_, _ = decodeDelta(fr0.payload, fuzzParent(), 1<<16)
			}
		}
	})
}

// FuzzDecodeDelta decodes arbitrary delta descriptions against a fixed
// parent.
func FuzzDecodeDelta(f *testing.F) {
	p := fuzzParent()
	ep := *p
	ep.Manifest.Epoch = 2
	enc, err := encodeDelta(&ep, p)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc)
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeDelta(data, p, 1<<16)
		if err == nil {
			if err := got.Validate(); err != nil {
				t.Fatalf("decoded an invalid epoch: %v", err)
			}
		}
	})
}

// FuzzReceive runs a receiver against arbitrary input; it must fail
// cleanly, or (for the real streams of the seed corpus) commit a complete
// epoch.
func FuzzReceive(f *testing.F) {
	f.Add(append(magic[:], 1, 0, 0, 0))
	var once sync.Once
	var st *store.Store
	dir := f.TempDir()
	f.Cleanup(func() {
		if st != nil {
			_ = st.Close()
		}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		once.Do(func() {
			cfg := store.DefaultConfig()
			cfg.Logger = quiet()
			cfg.Sync = false
			var err error
			if st, err = store.Open(filepath.Join(dir, "store"), cfg); err != nil {
				t.Fatal(err)
			}
		})
		if st == nil {
			t.Skip("no store")
		}
		cfg := testWireConfig()
		cfg.ErrorTimeout = time.Millisecond
		conn := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(data), io.Discard}
		ep, _, err := Receive(context.Background(), conn, st, cfg)
		if err != nil {
			return
		}
		got, err := st.Load(ep.Manifest.App, ep.Manifest.Epoch)
		if err != nil {
			t.Fatalf("accepted epoch does not load: %v", err)
		}
		if err := got.Validate(); err != nil {
			t.Fatal(err)
		}
		if m := st.Missing(got.UniqueHashes()); len(m) != 0 {
			t.Fatalf("accepted epoch lacks %d hashes", len(m))
		}
	})
}

func fuzzParent() *store.Epoch {
	h := func(s string) store.Hash { return store.Sum([]byte(s)) }
	return &store.Epoch{
		Manifest: store.Manifest{App: "app", Epoch: 1},
		Images: []store.ImageFile{
			{Name: "pages-1.img", Kind: store.KindPages, Size: 3 * store.PageSize, Hashes: []store.Hash{h("a"), store.ZeroPageHash(), h("b")}},
			{Name: "core-1.img", Kind: store.KindBlob, Size: 10, Hashes: []store.Hash{h("c")}},
		},
		Data: &store.DataSet{Roots: []string{"/d"}, Files: []store.DataFile{
			{Path: "/d", Mode: 1 << 31},
			{Path: "/d/f", Size: 5000, Blocks: []store.Hash{h("d"), h("e")}},
		}},
	}
}
