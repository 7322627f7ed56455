package wire

import (
	"log/slog"
	"runtime"
	"time"
)

// Config tunes Send and Receive. Start from DefaultConfig.
type Config struct {
	// BatchBytes is how many content bytes (uncompressed) one data frame
	// carries at most; at most MaxFrame.
	BatchBytes int
	// Workers is how many goroutines compress data frames while sending.
	// Values below 1 mean runtime.GOMAXPROCS(0).
	Workers int
	// MaxMeta is the largest epoch description a receiver accepts, in bytes.
	MaxMeta int64
	// MaxHashes is the most content hashes an epoch description may hold
	// (bounds the memory a hostile description can make a receiver use).
	MaxHashes int64
	// ErrorTimeout bounds how long a side that gives up tries to deliver
	// its error frame to the peer.
	ErrorTimeout time.Duration
	// Logger receives one line per epoch sent or received. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the production settings: 1 MiB frames, compression
// on every CPU, descriptions up to 256 MiB and 64 Mi hashes (256 GiB of
// pages), 2 s to deliver an error.
func DefaultConfig() Config {
	return Config{
		BatchBytes:   1 << 20,
		Workers:      runtime.GOMAXPROCS(0),
		MaxMeta:      256 << 20,
		MaxHashes:    64 << 20,
		ErrorTimeout: 2 * time.Second,
	}
}

func (c Config) normalized() Config {
	d := DefaultConfig()
	if c.BatchBytes <= 0 || c.BatchBytes > MaxFrame-(MaxFrame>>4) {
		c.BatchBytes = d.BatchBytes
	}
	if c.Workers < 1 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.MaxMeta <= 0 {
		c.MaxMeta = d.MaxMeta
	}
	if c.MaxHashes <= 0 {
		c.MaxHashes = d.MaxHashes
	}
	if c.ErrorTimeout <= 0 {
		c.ErrorTimeout = d.ErrorTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Stats reports one transfer, from the side that returns it. Send fills
// the XFER (Transfer) and ACK (Ack) timings and the bytes-sent counters the
// checkpoint engine records.
type Stats struct {
	App    string
	Epoch  uint64
	Parent uint64

	AlreadyHad bool // the receiver held the epoch: nothing was transferred
	Delta      bool // the description was sent as a delta against the parent

	Unique int64 // distinct content hashes the epoch references (zero pages excluded)
	Wanted int64 // of those, how many the receiver lacked and were sent

	Pages, Blobs, Blocks int64 // records sent, by kind

	MetaRaw, MetaWire  int64 // epoch description: encoded bytes, bytes on the wire (headers included)
	DataRaw, DataWire  int64 // content records: bytes, bytes on the wire (headers included)
	WireSent, WireRecv int64 // everything written to and read from the connection

	Handshake time.Duration // preamble, hello, ready
	Meta      time.Duration // epoch description
	Negotiate time.Duration // want bitmap
	Transfer  time.Duration // content frames up to and including the end frame (XFER)
	Ack       time.Duration // end frame to acknowledgement: the receiver's verify, fsync and commit (ACK)
}

// Ratio returns content bytes on the wire over raw content bytes, or 0 when
// no content was sent.
func (s Stats) Ratio() float64 {
	if s.DataRaw == 0 {
		return 0
	}
	return float64(s.DataWire) / float64(s.DataRaw)
}
