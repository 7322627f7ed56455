package node

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// hostLoad reads the 1-minute load average per CPU and the memory figures
// this node gossips for placement and balancing.
func hostLoad() (load float64, memFree, memTotal uint64) {
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			load, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return load, 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "MemTotal:":
			memTotal = kb << 10
		case "MemAvailable:":
			memFree = kb << 10
		}
	}
	return load, memFree, memTotal
}
