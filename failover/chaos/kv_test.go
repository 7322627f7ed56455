package chaos

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// kvAsk sends one command line to a kvapp at addr on a fresh connection and
// returns the first answer line.
func kvAsk(addr, cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	return strings.TrimSpace(line), nil
}

// kvInt sends a command answered by a number (INCR, GET).
func kvInt(addr, cmd string) (int64, error) {
	line, err := kvAsk(addr, cmd)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(line, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: answer %q", cmd, line)
	}
	return v, nil
}

// kvStats is the answer to STATS.
type kvStats struct {
	Applied, Dups, Keys, Partial int
}

func kvGetStats(addr string) (kvStats, error) {
	line, err := kvAsk(addr, "STATS")
	if err != nil {
		return kvStats{}, err
	}
	var s kvStats
	if _, err := fmt.Sscanf(line, "stats %d %d %d %d", &s.Applied, &s.Dups, &s.Keys, &s.Partial); err != nil {
		return kvStats{}, fmt.Errorf("STATS: answer %q: %w", line, err)
	}
	return s, nil
}

// kvApplied is one applied request id as IDS lists it.
type kvApplied struct {
	ID    string
	Value int64
	Dups  int
}

// kvIDs lists the applied request ids in order of application.
func kvIDs(addr string) ([]kvApplied, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintln(c, "IDS"); err != nil {
		return nil, err
	}
	var out []kvApplied
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		line := sc.Text()
		if line == "end" {
			return out, nil
		}
		var a kvApplied
		if _, err := fmt.Sscanf(line, "%s %d %d", &a.ID, &a.Value, &a.Dups); err != nil {
			return nil, fmt.Errorf("IDS: line %q: %w", line, err)
		}
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("IDS: no end line after %d id(s)", len(out))
}

// kvCheck asks the app to compare its data file with its memory.
func kvCheck(addr string) error {
	line, err := kvAsk(addr, "CHECK")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "ok ") {
		return fmt.Errorf("data file and memory disagree: %s", line)
	}
	return nil
}
