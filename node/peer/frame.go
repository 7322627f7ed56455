package peer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ProtoVersion is the version of the peer wire protocol below (frame types,
// hello, RPC and stream framing). A peer speaking another version is refused
// at the hello with an error wrapping ErrVersion.
const ProtoVersion = 1

// frameType is the first byte of every frame. Append-only: never renumber.
type frameType uint8

const (
	frameHello    frameType = 1 // client -> server, JSON hello
	frameWelcome  frameType = 2 // server -> client, JSON welcome
	frameRequest  frameType = 3 // RPC request, JSON rpcRequest
	frameResponse frameType = 4 // RPC response, JSON rpcResponse
	frameData     frameType = 5 // stream payload bytes
	frameEnd      frameType = 6 // stream: the sender called CloseWrite; empty
	framePing     frameType = 7 // stream keepalive; empty
)

// A frame is a 4-byte header, [type u8][payload length u24 big endian],
// followed by the payload.
const (
	headerSize = 4
	maxFrame   = 1<<24 - 1
)

// MaxMessage is the largest encoded RPC request or response (16 MiB - 1).
const MaxMessage = maxFrame

// maxHelloSize bounds hello and welcome frames.
const maxHelloSize = 4096

// Errors of the wire protocol; returned errors wrap them.
var (
	// ErrProtocol: the peer sent bytes that are not this protocol.
	ErrProtocol = errors.New("peer protocol error")
	// ErrVersion: the peer speaks another ProtoVersion.
	ErrVersion = errors.New("incompatible peer protocol version")
	// ErrTooLarge: an RPC message exceeds MaxMessage.
	ErrTooLarge = errors.New("peer message too large")
)

func putHeader(b []byte, t frameType, n int) {
	binary.BigEndian.PutUint32(b, uint32(t)<<24|uint32(n))
}

func parseHeader(b []byte) (frameType, int) {
	v := binary.BigEndian.Uint32(b)
	return frameType(v >> 24), int(v & maxFrame)
}

// writeFrame writes one frame in a single Write (one TLS record for small
// frames).
func writeFrame(w io.Writer, t frameType, payload []byte) error {
	if len(payload) > maxFrame {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(payload), maxFrame)
	}
	buf := make([]byte, headerSize+len(payload))
	putHeader(buf, t, len(payload))
	copy(buf[headerSize:], payload)
	_, err := w.Write(buf)
	return err
}

// writeJSON writes v as the JSON payload of a frame.
func writeJSON(w io.Writer, t frameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("peer: encode frame: %w", err)
	}
	return writeFrame(w, t, b)
}

// readFrame reads one whole frame whose payload must not exceed limit.
func readFrame(r io.Reader, limit int) (frameType, []byte, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	t, n := parseHeader(h[:])
	if n > limit {
		return t, nil, fmt.Errorf("%w: frame type %d of %d bytes exceeds %d", ErrProtocol, t, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return t, nil, err
	}
	return t, b, nil
}

// readJSON reads a frame of type want and decodes its JSON payload into v.
func readJSON(r io.Reader, want frameType, limit int, v any) error {
	t, b, err := readFrame(r, limit)
	if err != nil {
		return err
	}
	if t != want {
		return fmt.Errorf("%w: got frame type %d, want %d", ErrProtocol, t, want)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: frame type %d: %w", ErrProtocol, t, err)
	}
	return nil
}

// Connection purposes in a hello.
const (
	purposeRPC    = "rpc"
	purposeStream = "stream"
)

// hello opens every connection, after the TLS handshake.
type hello struct {
	V    int    `json:"v"`
	Type string `json:"t"`
	From string `json:"from"`
	Kind string `json:"kind,omitempty"`
	App  string `json:"app,omitempty"`
}

// welcome answers a hello: Err empty means accepted.
type welcome struct {
	V    int    `json:"v"`
	From string `json:"from"`
	Err  string `json:"err,omitempty"`
	Code string `json:"code,omitempty"`
}

// Error codes carried in welcomes and RPC responses.
const (
	codeVersion       = "version"
	codeUnknownMethod = "unknown_method"
	codeUnknownKind   = "unknown_kind"
	codeBadRequest    = "bad_request"
	codeInternal      = "internal"
)

type rpcRequest struct {
	Method string          `json:"m"`
	Body   json.RawMessage `json:"b,omitempty"`
}

type rpcResponse struct {
	Body json.RawMessage `json:"b,omitempty"`
	Err  string          `json:"e,omitempty"`
	Code string          `json:"c,omitempty"`
}
