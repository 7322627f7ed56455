package freezer

import "golang.org/x/sys/unix"

// isCloneSyscall says whether nr starts a new task: clone and clone3,
// and vfork where the architecture has it (sysno_vfork_*.go).
func isCloneSyscall(nr int) bool {
	return nr == unix.SYS_CLONE || nr == unix.SYS_CLONE3 || nr == sysVfork
}
