package api

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the daemon listens and the client connects unless
// told otherwise (--socket).
const DefaultSocket = "/run/doppel/doppel.sock"

// maxSocketPath is the longest path a unix socket address holds on Linux
// (sun_path is 108 bytes with the terminating NUL).
const maxSocketPath = 107

// Listen binds the API's unix socket at path with care:
//
//   - the parent directory is created with mode 0700 if missing (an
//     existing directory keeps its mode);
//   - an exclusive flock on path+".lock" (kept for the listener's life; the
//     file stays) makes two daemons starting at once exclude each other;
//   - an existing file at path is dialled: if something answers, Listen
//     fails with an error wrapping ErrDaemonRunning ("another doppel node is
//     running on PATH"); if nothing does, the stale socket is removed; a file
//     that is not a socket is left alone and reported;
//   - the new socket gets mode 0600 (root only).
//
// Closing the returned listener removes the socket file and releases the
// lock.
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen: empty socket path")
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("listen on %s: socket path is %d bytes, at most %d fit in a unix socket address", path, len(path), maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	lock, err := lockSocket(path)
	if err != nil {
		return nil, err
	}
	ln, err := listenUnix(path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &socketListener{UnixListener: ln, lock: lock}, nil
}

// lockSocket takes the exclusive lock that guards path.
func lockSocket(path string) (*os.File, error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock socket: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w on %s (its lock %s.lock is held)", ErrDaemonRunning, path, path)
		}
		return nil, fmt.Errorf("lock socket %s.lock: %w", path, err)
	}
	return f, nil
}

// listenUnix removes a stale socket at path, binds a new one and makes it
// 0600. The caller holds the lock.
func listenUnix(path string) (*net.UnixListener, error) {
	fi, err := os.Lstat(path)
	switch {
	case err == nil:
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen on %s: the path exists and is not a socket; remove it or pass another --socket", path)
		}
		live, err := answers(path)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: probe existing socket: %w", path, err)
		}
		if live {
			return nil, fmt.Errorf("%w on %s", ErrDaemonRunning, path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	// The socket is reachable with the umask's mode until this chmod; the
	// 0700 directory closes that window when the daemon created it.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen: set socket mode: %w", err)
	}
	return ln, nil
}

// answers reports whether a process accepts connections on the socket at
// path: true when a connection succeeds, false when it is refused (a stale
// socket, left by a daemon that died).
func answers(path string) (bool, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		c.Close()
		return true, nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return false, nil
	}
	return false, err
}

// socketListener is the API's listener: closing it removes the socket
// (net.UnixListener unlinks the file it created) and releases the lock.
type socketListener struct {
	*net.UnixListener
	lock *os.File
	once sync.Once
	err  error
}

func (l *socketListener) Close() error {
	l.once.Do(func() {
		l.err = l.UnixListener.Close()
		// Closing the descriptor releases the flock.
		if err := l.lock.Close(); l.err == nil {
			l.err = err
		}
	})
	return l.err
}
