package store

import "errors"

var (
	// ErrNotFound is returned for content (a Hash) the store does not hold.
	ErrNotFound = errors.New("content not found")
	// ErrNoEpoch is returned when an app has no complete epoch with the
	// requested number (or none at all).
	ErrNoEpoch = errors.New("no such epoch")
	// ErrEpochExists is returned by Commit when the epoch is already stored.
	ErrEpochExists = errors.New("epoch already exists")
	// ErrCorrupt is returned when stored metadata or content fails its
	// checksum or is malformed.
	ErrCorrupt = errors.New("store corrupt")
	// ErrHashMismatch is returned by Put when the data does not hash to the
	// given Hash.
	ErrHashMismatch = errors.New("content does not match its hash")
	// ErrIncomplete is returned by Commit when the epoch references content
	// that is neither in the store nor written by the transaction.
	ErrIncomplete = errors.New("epoch references missing content")
	// ErrBadImage is returned by ingest for a CRIU image directory it cannot
	// interpret (a pagemap that does not parse or does not match its pages
	// file, a file type it cannot store).
	ErrBadImage = errors.New("bad CRIU image")
	// ErrBadName is returned for an app name that cannot be a directory name.
	ErrBadName = errors.New("invalid app name")
	// ErrClosed is returned by operations on a closed Store or a finished
	// transaction.
	ErrClosed = errors.New("closed")
)
