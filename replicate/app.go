package replicate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoApp means no app of that name is registered on this node.
var ErrNoApp = errors.New("no such app")

// ErrAppExists means an app of that name is already registered.
var ErrAppExists = errors.New("app already exists")

// ErrBusy means another checkpoint or restore of the app is running.
var ErrBusy = errors.New("app is busy with another checkpoint or restore")

// Spec is what the operator declared about an app.
type Spec struct {
	Name string `json:"name"`
	// Args is the command line; Args[0] is looked up in PATH.
	Args []string `json:"args"`
	// Dir is the working directory.
	Dir string `json:"dir"`
	// Env is the environment the app was started with.
	Env []string `json:"env,omitempty"`
	// DataPaths are files or directories the app writes whose contents
	// travel with every epoch.
	DataPaths []string `json:"data_paths,omitempty"`
}

// AppState is what this node records about an app it runs or holds.
type AppState struct {
	Spec Spec `json:"spec"`
	// Pid is the host PID of the app's init (its PID-namespace root), 0 when
	// the app is not running here.
	Pid int `json:"pid"`
	// InitExe is the content-addressed init binary and InitSum its SHA-256.
	InitExe string `json:"init_exe"`
	InitSum string `json:"init_sum"`
	// Stdout and Stderr are the app's log files.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// PidStart is the start time of Pid (clock ticks since boot, as in
	// /proc/PID/stat), which tells the app's init from a later process
	// that reuses its PID; 0 when unknown.
	PidStart uint64 `json:"pid_start,omitempty"`
	// Cgroup is the freezer cgroup holding the app.
	Cgroup  string    `json:"cgroup,omitempty"`
	Started time.Time `json:"started"`
	// Term counts how many times the app was started or restored.
	Term uint64 `json:"term"`
	// LastEpoch is the highest epoch number this node gave the app (by a
	// checkpoint, an import or a restore). New epochs are numbered above it
	// and above every stored epoch, so a number is never reused even when
	// the store no longer holds the epochs that had it.
	LastEpoch uint64 `json:"last_epoch,omitempty"`
}

var appNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// ValidName checks an app name: lower-case letters, digits, '.', '_', '-',
// at most 63 characters, starting with a letter or digit.
func ValidName(name string) error {
	if !appNameRE.MatchString(name) {
		return fmt.Errorf("bad app name %q: use lower-case letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)", name)
	}
	return nil
}

// apps is the registry of app state files under a state directory:
// <dir>/<name>/app.json, plus the app's logs and lock file.
type apps struct{ dir string }

func (a apps) path(name string) string { return filepath.Join(a.dir, name) }

func (a apps) load(name string) (*AppState, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(a.path(name), "app.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (see doppel ls)", ErrNoApp, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read app %s: %w", name, err)
	}
	var st AppState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("app %s: corrupt app.json: %w", name, err)
	}
	return &st, nil
}

func (a apps) save(st *AppState) error {
	dir := a.path(st.Spec.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "app.json"), b, 0o600)
}

func (a apps) list() ([]string, error) {
	ents, err := os.ReadDir(a.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(a.dir, e.Name(), "app.json")); err == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// lock takes the app's exclusive lock without waiting; the returned
// function releases it. The lock is a flock, so it dies with the process.
// Without create, an app that has no directory is ErrNoApp (and none is
// made for it).
func (a apps) lock(name string, create bool) (func(), error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	dir := a.path(name)
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	} else if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (see doppel ls)", ErrNoApp, name)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrBusy, name)
		}
		return nil, err
	}
	return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// writeFileAtomic writes b to path through a synced temporary file and a
// rename, so readers see the old or the new content, never a mix.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
