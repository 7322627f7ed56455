package replicate

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Hold registers an app whose epochs this node receives as a clone: the app
// is known here (so it can be restored from its newest epoch) but not
// running. stdout and stderr are the app's log files as its OP has them:
// a restored app keeps writing to the same paths. A running app is left
// alone.
func (e *Engine) Hold(spec Spec, initExe, initSum, stdout, stderr string) (*AppState, error) {
	if err := ValidName(spec.Name); err != nil {
		return nil, err
	}
	unlock, err := e.apps.lock(spec.Name, true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := e.apps.load(spec.Name)
	if err != nil {
		dir := e.apps.path(spec.Name)
		st = &AppState{
			Stdout:  filepath.Join(dir, "stdout.log"),
			Stderr:  filepath.Join(dir, "stderr.log"),
			Started: time.Now(),
		}
	}
	if alive(st.Pid) {
		return st, nil
	}
	st.Spec = spec
	st.InitExe, st.InitSum = initExe, initSum
	if stdout != "" {
		st.Stdout, st.Stderr = stdout, stderr
	}
	st.Pid = 0
	if err := e.apps.save(st); err != nil {
		return nil, err
	}
	return st, nil
}

// HasInit reports whether the init binary an app's epochs map is present at
// path with the given SHA-256.
func HasInit(path, sum string) bool {
	got, err := initSum(path)
	return err == nil && got == sum
}

// initSum is the SHA-256 of the file at path, in hex. An init binary is
// tens of MiB and checked before every epoch sent and every restore: a
// file seen before, and unchanged since (same inode, size, modification
// and change times), is not hashed again.
func initSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	id, idErr := fileIdentity(f)
	if idErr == nil {
		if known, ok := initSums.Load(id); ok {
			return known.(string), nil
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if idErr == nil {
		initSums.Store(id, got)
	}
	return got, nil
}

// initSums caches the SHA-256 of init binaries by file identity.
var initSums sync.Map // fileID → string

type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

func fileIdentity(f *os.File) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileID{}, err
	}
	return fileID{dev: st.Dev, ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, nil
}

// InstallInit writes an init binary received from another node at path,
// after checking its SHA-256, so epochs that map it can be restored here.
func (e *Engine) InstallInit(r io.Reader, size int64, path, sum string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("init binary path %q is not absolute", path)
	}
	if HasInit(path, sum) {
		_, err := io.Copy(io.Discard, io.LimitReader(r, size))
		return err
	}
	tmp, err := e.stageInit(r, size, sum)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	return placeInit(tmp, path, sum)
}
