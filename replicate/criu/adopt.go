package criu

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// Adopting a tree that runs in the host PID namespace (doppel adopt) takes
// three steps that differ from an app's epochs:
//
//  1. The tree is dumped by a CRIU that runs in a UTS namespace of its own
//     (the driver's binary is a wrapper that enters one), with ShellJob: the
//     tree's UTS namespace then counts as one CRIU must restore, which is
//     what makes CRIU's restore mount a /proc of the PID namespace it
//     restores into (with no namespace to restore it opens the caller's
//     /proc, whose PIDs are the host's).
//  2. The tree is restored by a CRIU that the new PID namespace's init runs
//     as its child, with a private /proc of that namespace, told by
//     AdoptRestoreArgs to join the init's mount, UTS and time namespaces
//     (so the tree ends up in the host's, next to the init), to restore as
//     the init's child with the init's session and process group
//     (--shell-job), and to leave the tree stopped until the caller resumes
//     it.
//  3. Should that fail, the same images are restored into the host PID
//     namespace with Restore and RestoreOptions.JoinNs set to the caller's
//     UTS and time namespaces (HostJoinNs).

// AdoptRestoreArgs returns the criu command line, binary first, that
// restores the images in imagesDir (dumped as described above) inside the
// PID namespace of the process that runs it, as PID 1 of that namespace
// sees it: the tree's root becomes a sibling of CRIU (the child of the
// namespace's init), joins the init's mount, UTS and time namespaces, and
// is left stopped (SIGCONT resumes it). CRIU's log goes to
// workDir/RestoreLog (AdoptRestoreError reads it).
func (d *Driver) AdoptRestoreArgs(imagesDir, workDir string) []string {
	c := d.cfg
	lock := c.NetworkLock
	if lock == "" {
		lock = NetworkLockNftables
	}
	args := []string{d.path, "restore",
		"--images-dir", imagesDir,
		"--work-dir", workDir,
		"--log-file", RestoreLog,
		"-v" + strconv.Itoa(c.LogLevel),
		"--restore-detached", "--restore-sibling", "--leave-stopped",
		"--shell-job",
		"--manage-cgroups=ignore",
		"--network-lock", lock,
		"--join-ns", "mnt:/proc/1/ns/mnt",
		"--join-ns", "uts:/proc/1/ns/uts",
		"--join-ns", "time:/proc/1/ns/time",
	}
	if c.TCPEstablished {
		args = append(args, "--tcp-established")
	}
	if c.ExtUnixSk {
		args = append(args, "--ext-unix-sk")
	}
	if c.FileLocks {
		args = append(args, "--file-locks")
	}
	if c.LinkRemap {
		args = append(args, "--link-remap")
	}
	return args
}

// AdoptRestoreError is the error of a failed AdoptRestoreArgs restore: err
// (the init's report) with the Error lines of CRIU's log in workDir.
func AdoptRestoreError(imagesDir, workDir string, err error) *Error {
	return newError("restore", ErrRestore, 0, imagesDir, filepath.Join(workDir, RestoreLog), err, nil)
}

// HostJoinNs is RestoreOptions.JoinNs for putting an adopted tree back in
// the caller's UTS and time namespaces (see above).
func HostJoinNs(pid int) map[string]string {
	return map[string]string{
		"uts":  fmt.Sprintf("/proc/%d/ns/uts", pid),
		"time": fmt.Sprintf("/proc/%d/ns/time", pid),
	}
}
