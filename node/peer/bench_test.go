package peer

import (
	"context"
	"encoding/json"
	"io"
	"testing"
)

// BenchmarkRPC measures a small call on a pooled connection.
func BenchmarkRPC(b *testing.B) {
	key, _ := NewKey()
	srv := benchNode(b, "127.0.0.11", "a", key)
	cli := benchNode(b, "127.0.0.12", "b", key)
	srv.Handle("echo", func(ctx context.Context, from string, req json.RawMessage) (any, error) { return req, nil })
	ctx := context.Background()
	var out string
	if err := cli.Call(ctx, srv.Addr(), "echo", "x", &out); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if err := cli.Call(ctx, srv.Addr(), "echo", "x", &out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStream measures unlimited stream throughput over loopback TLS.
func BenchmarkStream(b *testing.B) {
	key, _ := NewKey()
	srv := benchNode(b, "127.0.0.11", "a", key)
	cli := benchNode(b, "127.0.0.12", "b", key)
	done := make(chan struct{})
	srv.HandleStream("bulk", func(ctx context.Context, s *Stream) {
		io.Copy(io.Discard, s)
		close(done)
	})
	s, err := cli.OpenStream(context.Background(), srv.Addr(), "bulk", "")
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	s.CloseWrite()
	<-done
	s.Close()
}

func benchNode(b *testing.B, ip, name string, key Key) *Transport {
	cfg := DefaultConfig()
	cfg.BindAddr, cfg.Key, cfg.NodeName = ip+":0", key, name
	cfg.Logger = (&logBuf{}).logger()
	tr, err := Listen(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	return tr
}
