package node

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"doppel/node/api"
)

// TestE2EProbe measures the link between two real daemons: capped by n1's
// rate limit of 20 MiB/s one way, uncapped the other way; then doppel
// bench --peer through the CLI, and the errors of bad input (unknown,
// self, dead peer, no daemon).
func TestE2EProbe(t *testing.T) {
	c := newCluster(t)
	const limit = 20 << 20
	n1 := c.start("--rate-limit", "20971520")
	n2 := c.start()
	waitFor(t, 30*time.Second, "n1 to see n2 alive", func() (bool, string) {
		m, err := memberStates(n1)
		if err != nil {
			return false, err.Error()
		}
		return m["n2"] == api.NodeAlive, ""
	})
	ctx := ctxT(t)

	capped, err := n1.Client.Probe(ctx, "n2", 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("n1 → n2 capped at 20 MiB/s: %.1f MiB/s (%d bytes in %.2f s), rtt %.2f ms %v",
		capped.Rate/(1<<20), capped.Bytes, capped.Seconds, capped.RTTMs, capped.RTTsMs)
	if capped.From != "n1" || capped.Node != "n2" || capped.Bytes != 32<<20 || capped.RateLimit != limit {
		t.Errorf("result %+v", capped)
	}
	// A wide band: the limiter lets no more than its burst through above
	// the cap; a loaded host may fall below it, but not to half.
	if capped.Rate > 1.15*limit || capped.Rate < 0.5*limit {
		t.Errorf("rate %.0f bytes/s with a cap of %d", capped.Rate, limit)
	}
	if capped.Capped != (capped.Rate >= 0.9*limit) {
		t.Errorf("capped %v at %.0f bytes/s", capped.Capped, capped.Rate)
	}
	if capped.RTTMs <= 0 || capped.RTTMs > 1000 || len(capped.RTTsMs) == 0 {
		t.Errorf("round trip %v ms %v", capped.RTTMs, capped.RTTsMs)
	}

	free, err := n2.Client.Probe(ctx, "n1", 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("n2 → n1 uncapped: %.1f MiB/s, rtt %.2f ms", free.Rate/(1<<20), free.RTTMs)
	if free.RateLimit != 0 || free.Capped || free.Rate <= 0 {
		t.Errorf("uncapped result %+v", free)
	}

	_, err = n1.Client.Probe(ctx, "nx", 0)
	if !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "not a member") {
		t.Errorf("unknown node: %v", err)
	}
	_, err = n1.Client.Probe(ctx, "n1", 0)
	if !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "this node") {
		t.Errorf("self: %v", err)
	}

	// The CLI: doppel bench --peer uses the measured rate.
	stateDir := filepath.Join(c.dir, "bench")
	code, out, errOut := c.cli(n1.Sock, "--state-dir", stateDir, "bench", "--peer", "n2", "--probe-size", "16MiB",
		"--size", "16MiB", "--rounds", "1", "--json")
	if code != 0 {
		t.Fatalf("doppel bench --peer n2: exit %d\n%s%s", code, out, errOut)
	}
	var rep struct {
		Report struct {
			Link *struct {
				Peer   string  `json:"peer"`
				Rate   float64 `json:"rate"`
				Capped bool    `json:"capped"`
			} `json:"link"`
		} `json:"report"`
		Rates struct {
			Link float64 `json:"Link"`
		} `json:"rates"`
		Recommendation struct {
			Interval any `json:"Interval"`
		} `json:"recommendation"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	l := rep.Report.Link
	if l == nil || l.Peer != "n2" || l.Rate > 1.15*limit || l.Rate < 0.5*limit {
		t.Fatalf("bench link %+v, want n2 near %d bytes/s\n%s", l, limit, out)
	}
	if int64(rep.Rates.Link) != int64(l.Rate) {
		t.Errorf("recommendation used link %.0f, measured %.0f", rep.Rates.Link, l.Rate)
	}
	t.Logf("doppel bench --peer n2: %s", strings.TrimSpace(errOut))
	// The text report names the measured link.
	code, out, errOut = c.cli(n1.Sock, "--state-dir", stateDir, "bench", "--peer", "n2", "--probe-size", "8MiB",
		"--size", "8MiB", "--rounds", "1")
	if code != 0 || !strings.Contains(out, "measured to n2") || !strings.Contains(out, "transfer.rate_limit") {
		t.Errorf("doppel bench --peer n2 (text): exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("doppel bench --peer n2 (text):\n%s", out)

	// Bad input on the CLI: one line naming the problem.
	code, _, errOut = c.cli(n1.Sock, "bench", "--peer", "nx")
	if code == 0 || !strings.Contains(errOut, "nx is not a member") || strings.Count(strings.TrimSpace(errOut), "\n") > 1 {
		t.Errorf("bench --peer nx: exit %d: %q", code, errOut)
	}
	code, _, errOut = c.cli(filepath.Join(c.dir, "none.sock"), "bench", "--peer", "n2")
	if code == 0 || !strings.Contains(errOut, "no doppel daemon") {
		t.Errorf("bench --peer without daemon: exit %d: %q", code, errOut)
	}

	// A dead peer.
	n2.stop(t)
	waitFor(t, 30*time.Second, "n1 to see n2 gone", func() (bool, string) {
		m, err := memberStates(n1)
		if err != nil {
			return false, err.Error()
		}
		return m["n2"] != api.NodeAlive, m["n2"]
	})
	_, err = n1.Client.Probe(ctx, "n2", 0)
	if !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "start its daemon") {
		t.Errorf("dead node: %v", err)
	}
}
