//go:build !amd64

package freezer

// sysVfork: the architecture has no vfork system call (glibc and Go use
// clone with CLONE_VFORK).
const sysVfork = -1
