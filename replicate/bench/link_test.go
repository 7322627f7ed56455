package bench

import (
	"strings"
	"testing"
	"time"
)

// TestLinkDescribe: the report's link line says where the rate comes from
// and whether the rate limit set it.
func TestLinkDescribe(t *testing.T) {
	for _, tc := range []struct {
		l    Link
		want []string
	}{
		{Link{Peer: "n2", Rate: 20 << 20, Bytes: 64 << 20, RTT: Millis(200 * time.Microsecond), RateLimit: 20 << 20, Capped: true},
			[]string{"20.0 MiB/s measured to n2", "64.0 MiB sent", "round trip 0.20 ms", "capped by transfer.rate_limit"}},
		{Link{Peer: "n3", Rate: 5 << 20, Bytes: 64 << 20, RateLimit: 20 << 20},
			[]string{"measured to n3", "the network sets it"}},
		{Link{Peer: "n4", Rate: 700 << 20, Bytes: 64 << 20},
			[]string{"no transfer.rate_limit"}},
	} {
		got := tc.l.describe()
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%q does not contain %q", got, w)
			}
		}
	}
}
