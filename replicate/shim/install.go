package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ExeName is the file name of an installed init executable.
const ExeName = "doppel"

// selfExe is the running executable. /proc/self/exe reads the bytes that
// are running even when the file on disk was replaced by an upgrade.
const selfExe = "/proc/self/exe"

// InstallExe copies the running executable to
// <stateDir>/bin/<sha256>/doppel and returns that path and the hex SHA-256.
// Applications are started from this path: CRIU validates the files a
// restored tree maps, so the init must exist byte-identical at the same path
// wherever the application is restored, and a content-addressed path lets
// several versions coexist during an upgrade.
//
// InstallExe is idempotent and safe to run concurrently (also from several
// processes): an existing file is verified and kept, a new one is written
// to a temporary name, synced and renamed into place.
func InstallExe(stateDir string) (path, sum string, err error) {
	return installFile(stateDir, selfExe)
}

// installFile installs src as InstallExe does.
func installFile(stateDir, src string) (path, sum string, err error) {
	if stateDir == "" {
		return "", "", errors.New("install init: empty state directory")
	}
	sum, err = fileSHA256(src)
	if err != nil {
		return "", "", fmt.Errorf("install init: %w", err)
	}
	dir := filepath.Join(stateDir, "bin", sum)
	path = filepath.Join(dir, ExeName)
	if got, err := fileSHA256(path); err == nil && got == sum {
		return path, sum, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("install init: %w", err)
	}
	if err := copyAtomic(src, path, sum); err != nil {
		return "", "", fmt.Errorf("install init %s: %w", path, err)
	}
	return path, sum, nil
}

// copyAtomic writes src to dst through a temporary file in dst's directory
// and checks the copy against sum before renaming it into place.
func copyAtomic(src, dst, sum string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+ExeName+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
		}
		_ = os.Remove(tmp.Name()) // after the link, dst keeps the content
	}()
	h := sha256.New()
	if _, err = io.Copy(io.MultiWriter(tmp, h), in); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("source changed while copying (sha256 %s, want %s)", got, sum)
	}
	if err = tmp.Chmod(0o755); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	// A link, not a rename: a rename would replace a copy another process
	// installed meanwhile, and an app already running from that copy would
	// map a deleted file (which CRIU cannot dump). The content is the
	// same by construction (content-addressed path).
	if err = os.Link(tmp.Name(), dst); errors.Is(err, os.ErrExist) {
		// Someone else installed it meanwhile (keep theirs), or a damaged
		// copy is in the way (replace it).
		if have, herr := fileSHA256(dst); herr != nil || have != sum {
			err = os.Rename(tmp.Name(), dst)
		} else {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
