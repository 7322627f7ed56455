package node

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vip is a floating service address that moves with an app's OP: added to
// a device of the OP node when the service opens, announced with a
// gratuitous ARP so that neighbours update their caches at once, removed
// when the service closes. Opt-in: never used unless the app declares one.
type vip struct {
	addr *netlink.Addr
	link netlink.Link
}

// addVIP adds cidr (e.g. 10.0.0.50/24) to the device dev and announces it.
func addVIP(cidr, dev string) (*vip, error) {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return nil, fmt.Errorf("vip %q: use ADDR/PREFIX, e.g. 10.0.0.50/24: %w", cidr, err)
	}
	if addr.IP.To4() == nil {
		return nil, fmt.Errorf("vip %s: only IPv4 floating addresses are supported", cidr)
	}
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("vip device %q: %w", dev, err)
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("add vip %s to %s: %w", cidr, dev, err)
	}
	v := &vip{addr: addr, link: link}
	if err := gratuitousARP(link, addr.IP); err != nil {
		return v, fmt.Errorf("vip %s on %s added, but the ARP announcement failed: %w", cidr, dev, err)
	}
	return v, nil
}

// remove takes the address off the device.
func (v *vip) remove() error {
	if v == nil {
		return nil
	}
	if err := netlink.AddrDel(v.link, v.addr); err != nil {
		return fmt.Errorf("remove vip %s from %s: %w", v.addr, v.link.Attrs().Name, err)
	}
	return nil
}

// gratuitousARP broadcasts an ARP request for ip from the device's own
// hardware address (RFC 5227 announcement).
func gratuitousARP(link netlink.Link, ip net.IP) error {
	mac := link.Attrs().HardwareAddr
	if len(mac) != 6 {
		return nil // no Ethernet address (loopback, tun): nothing to announce
	}
	const ethPArp = 0x0806
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(ethPArp)))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	frame := make([]byte, 0, 42)
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	frame = append(frame, bcast...)
	frame = append(frame, mac...)
	frame = binary.BigEndian.AppendUint16(frame, ethPArp)
	frame = binary.BigEndian.AppendUint16(frame, 1)      // hardware: Ethernet
	frame = binary.BigEndian.AppendUint16(frame, 0x0800) // protocol: IPv4
	frame = append(frame, 6, 4)
	frame = binary.BigEndian.AppendUint16(frame, 1) // request
	frame = append(frame, mac...)
	frame = append(frame, ip.To4()...)
	frame = append(frame, 0, 0, 0, 0, 0, 0)
	frame = append(frame, ip.To4()...)
	sa := &unix.SockaddrLinklayer{Protocol: htons(ethPArp), Ifindex: link.Attrs().Index, Halen: 6}
	copy(sa.Addr[:], bcast)
	return unix.Sendto(fd, frame, 0, sa)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
