package wire

import (
	"fmt"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"doppel/replicate/store"
	"doppel/replicate/store/storetest"
)

// BenchmarkSendReceive measures a full epoch sent to an empty receiver and
// an incremental one (1% of the pages dirtied) sent to a receiver holding
// the parent, over net.Pipe and loopback TCP. Both stores fsync. Reported:
// throughput over the epoch's memory size, wire bytes per epoch and the
// content compression ratio.
func BenchmarkSendReceive(b *testing.B) {
	for _, sz := range []struct {
		name  string
		pages int
	}{{"16MiB", 4096}, {"256MiB", 65536}, {"1GiB", 262144}} {
		for _, kind := range []string{"pipe", "tcp"} {
			conns := pipe
			if kind == "tcp" {
				conns = tcp
			}
			o := newOP(b, "app", sz.pages)
			n1 := o.checkpoint()
			storetest.Dirty(o.mem, 0.01, 1)
			n2 := o.checkpoint()
			b.Run(fmt.Sprintf("full/%s/%s", sz.name, kind), func(b *testing.B) {
				benchTransfer(b, o, conns, 0, n1, int64(sz.pages)*store.PageSize)
			})
			b.Run(fmt.Sprintf("incremental1pct/%s/%s", sz.name, kind), func(b *testing.B) {
				benchTransfer(b, o, conns, n1, n2, int64(sz.pages)*store.PageSize)
			})
		}
	}
}

func benchTransfer(b *testing.B, o *op, conns func(testing.TB) (net.Conn, net.Conn), base, n uint64, size int64) {
	b.SetBytes(size)
	var last Stats
	for b.Loop() {
		b.StopTimer()
		sb := openStore(b)
		if base != 0 {
			a, c := conns(b)
			if _, r := transfer(b, o.st, o.app, base, sb, a, c); r.err != nil {
				b.Fatal(r.err)
			}
		}
		a, c := conns(b)
		unix.Sync() // setup's writeback must not compete with the transfer
		b.StartTimer()
		st, r := transfer(b, o.st, o.app, n, sb, a, c)
		b.StopTimer()
		if r.err != nil {
			b.Fatal(r.err)
		}
		last = st
		_ = sb.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(last.WireSent), "wire-bytes/op")
	b.ReportMetric(last.Ratio(), "wire/raw")
	b.ReportMetric(float64(last.Transfer.Milliseconds()), "xfer-ms")
	b.ReportMetric(float64(last.Ack.Milliseconds()), "ack-ms")
}
