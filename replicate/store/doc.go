// Package store keeps the epochs of replicated apps on local disk,
// content-addressed, so that every distinct page, image-file chunk and
// data-file block is stored once however many epochs and apps reference it.
//
// # Model
//
// An Epoch is a Manifest, the files of a CRIU image directory (ImageFile)
// and a data-file snapshot (DataSet). Content is named by its Hash, the
// 128-bit xxh3 of the bytes: pages-N.img files are split into 4 KiB pages,
// every other image file into 1 MiB chunks, data files into 4 KiB blocks.
// All-zero pages (ZeroPageHash) are recorded, never stored. Epochs do not
// depend on each other on disk: an incremental epoch references the same
// hashes as its parent for what did not change, so deleting any epoch never
// breaks another, and "what changed" costs only the new content.
//
// Writing goes through a transaction (Begin, Put / AddImageDir, SetData,
// Commit or Abort). Reading goes through Load, Materialise, Get and Fetch;
// Pin keeps GC away from an epoch being read.
//
// # On-disk layout
//
//	<root>/LOCK                      flock(2)ed by the open Store
//	<root>/packs/<id>.pack           records, raw, back to back (zero padding to a 4 KiB boundary after each direct write)
//	<root>/packs/<id>.idx            index of that pack (below)
//	<root>/packs/<id>.pack.tmp       pack of an open transaction (removed by Open)
//	<root>/apps/<app>/<epoch>/       a complete epoch; <epoch> is 20 decimal digits
//	       epoch.bin                 the Epoch, binary (below)
//	       manifest.json             the Manifest, indented JSON, for people and tools
//	<root>/apps/<app>/.tmp-*         epoch being committed (removed by Open)
//	<root>/apps/<app>/.trash-*       epoch being deleted by GC (removed by Open)
//	<root>/scratch/                  ScratchDir: CRIU dump directories (emptied by Open)
//
// An index file is the magic "DPLIDX01", then one 32-byte entry per record
// (hash 16 bytes, offset uint64 LE, length uint32 LE, encoding byte, 3 zero
// bytes; encoding 0 = raw is the only one written), then the xxh3-64 (LE) of
// everything before it. A pack is valid only when its index exists.
//
// epoch.bin is the magic "DPLEPOC1", the manifest JSON (uvarint length +
// bytes), the image files (uvarint count; each: name, kind byte, mode
// uvarint, size uvarint, symlink target, uvarint hash count + 16-byte
// hashes), a data-set marker byte (0 none, 1 present: roots, then files:
// path, mode uvarint, size uvarint, mtime varint ns, target, block hashes),
// and the xxh3-64 (LE) of everything before it. Strings are uvarint length +
// bytes.
//
// # Crash safety
//
// A transaction writes packs under temporary names. Commit fsyncs the packs,
// writes and fsyncs their indexes, renames pack then index into place,
// fsyncs the directory, writes epoch.bin and manifest.json into a temporary
// epoch directory, fsyncs it and renames it to its final name, then fsyncs
// the app directory. An epoch directory therefore exists only complete; a
// crash or error at any point leaves temporary files that Open deletes, or
// committed packs nobody references that GC deletes. A failed write (disk
// full) fails the transaction; Abort deletes what it wrote.
//
// # Why pages are stored raw
//
// LZ4 runs at about 0.5 GB/s per core on page data on the machines this
// project targets, against about 10 GB/s for hashing and copying
// (BenchmarkPageEncoding), so compressing 1 GiB on 2 cores would take about
// a second while the budget for the whole ingest is less. Pages are
// therefore stored raw, which also lets Materialise move page runs with
// copy_file_range without touching them in user space; compression happens
// on the wire (package replicate/wire), after the app has been resumed.
//
// Packs are written through a page-aligned buffer with O_DIRECT, double
// buffered: on these machines buffered writes plus the fsync at commit cost
// 2-3 times as much as direct writes of the same bytes (BenchmarkIngest).
//
// # GC
//
// GC keeps the newest Config.Retention epochs of each app (and any pinned
// epoch), deletes the others, deletes packs with no live record and rewrites
// packs whose live ratio is below Config.CompactBelow.
package store
