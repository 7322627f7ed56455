package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"
)

// healthThreshold is how many failed checks in a row count as the app
// dying.
const healthThreshold = 3

// checkHealth runs an app's health check once: "tcp:HOST:PORT" connects,
// "http(s)://..." expects a 2xx or 3xx answer, "cmd:COMMAND" expects exit
// status 0 from sh -c COMMAND.
func checkHealth(ctx context.Context, check string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case strings.HasPrefix(check, "tcp:"):
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", strings.TrimPrefix(check, "tcp:"))
		if err != nil {
			return err
		}
		return c.Close()
	case strings.HasPrefix(check, "http://"), strings.HasPrefix(check, "https://"):
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, check, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("%s answered %s", check, resp.Status)
		}
		return nil
	case strings.HasPrefix(check, "cmd:"):
		out, err := exec.CommandContext(ctx, "sh", "-c", strings.TrimPrefix(check, "cmd:")).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	return fmt.Errorf("unknown health check %q", check)
}
