// Package wire moves epochs between the node that runs an app (the
// sender) and its clones (receivers) over one bidirectional connection,
// sending each page, image-file chunk and data-file block at most once.
//
// # Stream
//
// Both sides first write a 12-byte preamble: the magic "DPLWIRE\x00" and
// the protocol Version (uint32 LE). A receiver that speaks another version
// answers with an error frame. Then frames follow, in this order (S is the
// sender, R the receiver):
//
//	S→R hello      app, epoch, parent, the epoch's digest, the parent's digest
//	               (store.Epoch.Digest; zero: S offers no parent), the
//	               epoch's cluster term
//	R→S ready      bit 0: R holds the epoch; bit 1: R holds the parent
//	               (same number and same digest in both cases)
//	S→R meta...    the epoch description in chunks of up to 1 MiB
//	S→R meta-end   encoding (0 full, 1 delta against the parent), length, xxh3-64
//	R→S want...    bitmap over the epoch's distinct content hashes (order of
//	               first reference, zero pages excluded): bit i set = R lacks hash i
//	R→S want-end   number of bits, number of bits set
//	S→R pages / blobs / blocks ...
//	               the wanted content, in want order, as records
//	               (uvarint length + bytes); R checks each against its hash
//	S→R end        number of records, content bytes
//	R→S ack        epoch number, sent only after R committed and fsynced the epoch
//
// If R already holds the epoch, S sends end right after ready and R
// acknowledges. An epoch R holds under either number with another digest
// was made by another OP (a deposed one checkpoints until its lease runs
// out): R deletes its epochs from that number on before it takes the
// sender's, and a delta is never decoded against it. R also deletes the
// epochs it holds above the one sent with an older cluster term
// (store.Manifest.ClusterTerm), so they never pass for the newest.
// Before it commits, R checks that the description it decoded has the
// digest the hello announced. Either side may send an error frame (UTF-8 text) instead of
// the frame due and give up; the peer returns ErrRemote with that text.
//
// The full description is store.Epoch.MarshalBinary; the delta encoding is
// described in meta.go. Message types are an append-only enum (MsgType)
// next to Version.
//
// # Frames
//
// A frame is a 24-byte header and a payload:
//
//	offset size
//	0      1    message type
//	1      1    flags: bit 0 = payload is an LZ4 block
//	2      2    zero
//	4      4    payload length uncompressed (uint32 LE), at most MaxFrame (4 MiB)
//	8      4    payload length on the wire (uint32 LE), at most the LZ4 bound of MaxFrame
//	12     4    sequence number (uint32 LE), 0 for each side's first frame, +1 per frame
//	16     8    xxh3-64 (LE) of header bytes 0..15 followed by the wire payload
//
// A reader checks type, flags and both lengths before allocating anything,
// then the checksum and the sequence number before decompressing; a frame
// that fails any check ends the stream. Payloads are compressed (LZ4 block
// format, github.com/pierrec/lz4/v4) when that makes them smaller.
// Data frames carry up to Config.BatchBytes of content and are compressed in
// parallel (Config.Workers).
//
// # Guarantees
//
// Receive commits the epoch through a store transaction: nothing is
// visible before every record has been verified and the epoch has been
// fsynced and renamed into place, and only then is the ack sent. A broken,
// truncated or tampered stream aborts the transaction and leaves the store's
// previous epochs as they were. Stats returned by both sides give raw and
// on-the-wire bytes and the time of each phase (handshake, meta, negotiate,
// transfer = XFER, ack = ACK).
package wire
