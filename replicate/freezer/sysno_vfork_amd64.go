package freezer

import "golang.org/x/sys/unix"

const sysVfork = unix.SYS_VFORK
