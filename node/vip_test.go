package node

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestVIP adds, announces and removes a floating address on a veth device
// inside a network namespace the test creates, so no real network is
// touched.
func TestVIP(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root; the vip test needs a network namespace")
		}
		t.Skip("needs root for a network namespace: run sudo scripts/test.sh")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // also switches this thread into it
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = netns.Set(orig)
		ns.Close()
	}()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vip0"}, PeerName: "vip1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName("vip0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	v, err := addVIP("10.77.0.50/24", "vip0")
	if err != nil {
		t.Fatal(err)
	}
	has := func() bool {
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.IP.String() == "10.77.0.50" {
				return true
			}
		}
		return false
	}
	if !has() {
		t.Fatal("vip not on the device")
	}
	// Adding it again (a restarted OP) is not an error.
	if _, err := addVIP("10.77.0.50/24", "vip0"); err != nil {
		t.Fatalf("second add: %v", err)
	}
	if err := v.remove(); err != nil {
		t.Fatal(err)
	}
	if has() {
		t.Fatal("vip still on the device after remove")
	}
	for _, bad := range [][2]string{{"10.77.0.50", "vip0"}, {"fe80::1/64", "vip0"}, {"10.77.0.51/24", "nodev0"}} {
		if _, err := addVIP(bad[0], bad[1]); err == nil {
			t.Errorf("addVIP(%q, %q) accepted", bad[0], bad[1])
		}
	}
}
