package store

import "time"

// Manifest describes one epoch: where it sits in the app's history, how long
// each checkpoint phase took and what was captured, changed and skipped. It is
// stored as manifest.json in the epoch directory and travels in the first
// frames of a wire stream.
//
// The store fills App, Epoch, Parent, Created, Pages, Images and Bytes at
// Commit when the transaction ingested an image directory; every other field
// is the caller's.
type Manifest struct {
	App    string `json:"app"`
	Epoch  uint64 `json:"epoch"`
	Parent uint64 `json:"parent,omitempty"` // 0: no parent (a full epoch)
	Term   uint64 `json:"term"`
	// ClusterTerm is the app's term in the cluster state when its OP made
	// the epoch (0 outside a cluster). A receiver drops the epochs it holds
	// above a received one that have an older cluster term: another OP
	// made them, and they must never pass for the newest.
	ClusterTerm uint64    `json:"cluster_term,omitempty"`
	Created     time.Time `json:"created"`

	// Barrier is the journal position at the process synchronisation barrier:
	// a restore of this epoch replays the journal from here.
	Barrier uint64 `json:"barrier"`

	Phases Phases      `json:"phases"`
	Pages  PageCounts  `json:"pages"`
	Images ImageCounts `json:"images"`
	Bytes  ByteCounts  `json:"bytes"`
	Data   DataCounts  `json:"data"`

	CRIUVersion string `json:"criu_version,omitempty"`
	Kernel      string `json:"kernel,omitempty"`
	// CRIUStats holds CRIU's stats-dump counters as CRIU names them
	// (freezing_time, frozen_time, memdump_time, memwrite_time, pages_scanned,
	// ...), times in microseconds as CRIU reports them.
	CRIUStats map[string]uint64 `json:"criu_stats,omitempty"`
}

// Phases holds the measured duration of each checkpoint phase. Zero means the
// phase did not run or was not measured.
type Phases struct {
	PSB    time.Duration `json:"psb"`    // process synchronisation barrier
	RM     time.Duration `json:"rm"`     // resource management
	SRM    time.Duration `json:"srm"`    // system resources, data-file delta
	PRM    time.Duration `json:"prm"`    // process resources (CRIU memory dump)
	Ingest time.Duration `json:"ingest"` // image directory into the store (filled by the store)
}

// Reasons a page is not stored, used as keys of PageCounts.Skipped.
const (
	SkipUnchanged = "unchanged"  // same content at the same address as in the parent epoch
	SkipZero      = "zero"       // all-zero page: recorded, never stored
	SkipDuplicate = "duplicate"  // content already in the store (other address, app or epoch)
	SkipInParent  = "in-parent"  // pagemap entry flagged PE_PARENT: CRIU left the data in the parent image
	SkipLazy      = "lazy"       // pagemap entry flagged PE_LAZY: data comes later through lazy-pages
	SkipNoAddress = "no-address" // page of a pages file without a usable pagemap (counted in Changed)
)

// PageCounts counts the memory pages of an epoch.
type PageCounts struct {
	// Scanned is the number of pages read from pages-N.img files.
	Scanned int64 `json:"scanned"`
	// Changed is the number of scanned pages whose content at their (process,
	// virtual address) differs from the parent epoch's, or that the parent
	// epoch did not have.
	Changed int64 `json:"changed"`
	// Zero is the number of scanned pages that are all zero.
	Zero int64 `json:"zero"`
	// New is the number of pages written to the store: content it did not
	// hold before. A clone that holds the parent epoch is sent these pages.
	New int64 `json:"new"`
	// Skipped counts, per reason (Skip* constants), the pages not written.
	// A page is counted under the first reason that applies, in the order
	// in-parent, lazy, zero, unchanged, duplicate.
	Skipped map[string]int64 `json:"skipped,omitempty"`
}

// ImageCounts counts the CRIU image files of an epoch other than page data.
type ImageCounts struct {
	Files   int64 `json:"files"`   // image files in the directory (pages files included)
	Changed int64 `json:"changed"` // files that are new or whose bytes differ from the parent's file of the same name
	Removed int64 `json:"removed"` // files of the parent epoch absent from this one
}

// ByteCounts counts bytes of an epoch.
type ByteCounts struct {
	Raw    int64 `json:"raw"`    // size of the image directory (all files)
	Pages  int64 `json:"pages"`  // size of the pages-N.img files
	Stored int64 `json:"stored"` // bytes written to packs by this epoch (pages, image chunks, data blocks)
}

// DataCounts counts the data-file snapshot of an epoch (see package
// replicate/datafile).
type DataCounts struct {
	FilesScanned   int64            `json:"files_scanned"`   // regular files found under the declared paths
	FilesUnchanged int64            `json:"files_unchanged"` // files taken from the previous snapshot by size and mtime, without reading
	FilesChanged   int64            `json:"files_changed"`   // files read because size, mtime or mode differed (new files included)
	FilesNew       int64            `json:"files_new"`       // files absent from the previous snapshot
	FilesRemoved   int64            `json:"files_removed"`   // files of the previous snapshot that are gone
	BlocksHashed   int64            `json:"blocks_hashed"`   // blocks read and hashed
	BlocksChanged  int64            `json:"blocks_changed"`  // blocks whose hash differs from the previous snapshot's block at that offset
	BlocksStored   int64            `json:"blocks_stored"`   // blocks written to the store (content it did not hold)
	BytesChanged   int64            `json:"bytes_changed"`   // bytes of the changed blocks
	Skipped        map[string]int64 `json:"skipped,omitempty"`
}
