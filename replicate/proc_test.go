package replicate

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestDescribeTasks: a live process is described with its command and
// state, a missing one as gone.
func TestDescribeTasks(t *testing.T) {
	got := describeTasks([]int{os.Getpid(), 1 << 22})
	if !strings.Contains(got, fmt.Sprintf("pid %d (", os.Getpid())) || !strings.Contains(got, fmt.Sprintf("pid %d gone", 1<<22)) {
		t.Fatalf("describeTasks: %q", got)
	}
}
