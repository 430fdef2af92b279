//! The "Internet" side of the north-south system tests (`system_fip`, `system_snat`): the
//! provider network's VLAN 101 in a namespace of its own, the external gateway 203.0.113.1
//! and an Internet host 100.64.0.9 behind it. This kernel may lack 802.1Q, so the VLAN
//! interface falls back to a TAP bridged to the VLAN in user space.
use std::time::Duration;

use super::{python, Bg, Topology};

/// The provider network's VLAN, as tshark prints it.
pub const VID: &str = "101";
/// The external network's gateway (the internet namespace's VLAN interface).
pub const EXT_GW_IP: &str = "203.0.113.1";
pub const EXT_GW_MAC: &str = "02:00:00:00:01:01";
/// The Internet host, behind the gateway.
pub const INET_IP: &str = "100.64.0.9";

/// A VLAN subinterface played in user space, for kernels without 802.1Q: creates TAP
/// `argv[3]` in the current namespace and bridges it to VLAN `argv[2]` on `argv[1]` (frames
/// from the TAP leave tagged; frames received with that VLAN, tagged in the packet's
/// metadata (`PACKET_AUXDATA`) or in-band, go to the TAP untagged; everything else is
/// ignored). Prints "ready" once both ends are open.
pub const VLAN_TAP_PY: &str = r#"
import fcntl, os, select, socket, struct, sys
iface, vid, tap_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID = 263, 8, 1 << 4
tap = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", tap_name.encode(), IFF_TAP | IFF_NO_PI))
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
raw.bind((iface, 0))
raw.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
tag = struct.pack("!HH", 0x8100, vid)
print("ready", flush=True)
while True:
    ready, _, _ = select.select([raw, tap], [], [])
    if raw in ready:
        frame, anc, _, addr = raw.recvmsg(65536, socket.CMSG_SPACE(64))
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        tci = None
        for level, kind, data in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 20:
                status, _, _, _, _, vlan_tci, _ = struct.unpack("IIIHHHH", data[:20])
                if status & TP_STATUS_VLAN_VALID:
                    tci = vlan_tci
        if tci is None and frame[12:14] == b"\x81\x00":
            tci = int.from_bytes(frame[14:16], "big")
            frame = frame[:12] + frame[16:]
        if tci is not None and tci & 0xFFF == vid:
            os.write(tap, frame)
    if tap in ready:
        frame = os.read(tap, 65536)
        raw.send(frame[:12] + tag + frame[12:])
"#;

/// The internet namespace: `eth0` joined to the switch's `uplink` (no address, IPv6 off),
/// `eth0.101` on VLAN 101 with the external gateway's MAC and 203.0.113.1/24, and the
/// Internet host's 100.64.0.9/32 on `lo`, the source of what it sends to `sourced`. Returns the namespace and the user-space VLAN
/// bridge when the kernel has no 802.1Q (kept alive by the caller).
pub fn add_internet(topo: &mut Topology, sw: &str, sourced: &[&str]) -> (String, Option<Bg>) {
    let ns = topo.add_ns("inet");
    topo.disable_ipv6(&ns);
    topo.veth(sw, "uplink", &ns, "eth0");
    topo.ok(sw, &["ip", "link", "set", "uplink", "up"]);
    topo.set_mac_up(&ns, "eth0", EXT_GW_MAC);
    let offloads_off = |dev: &str| {
        topo.ok(
            &ns,
            &[
                "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
            ],
        );
    };
    offloads_off("eth0");
    let vlan = format!("eth0.{VID}");
    let kernel = topo.exec(
        &ns,
        &[
            "ip", "link", "add", "link", "eth0", "name", &vlan, "type", "vlan", "id", VID,
        ],
    );
    let shim = if kernel.status.success() {
        None
    } else {
        eprintln!(
            "[{}] {vlan}: no 802.1Q in this kernel, a TAP bridged to VLAN {VID} in user space",
            topo.name
        );
        let mut bg = topo.spawn(
            &ns,
            "vlan-tap",
            &[python(), "-c", VLAN_TAP_PY, "eth0", VID, &vlan],
        );
        assert!(
            bg.wait_for("ready", Duration::from_secs(10)),
            "user-space VLAN bridge did not start: {}",
            bg.stderr_text()
        );
        Some(bg)
    };
    topo.set_mac_up(&ns, &vlan, EXT_GW_MAC);
    offloads_off(&vlan);
    let cidr = format!("{EXT_GW_IP}/24");
    topo.ok(&ns, &["ip", "addr", "add", &cidr, "dev", &vlan]);
    let host = format!("{INET_IP}/32");
    topo.ok(&ns, &["ip", "addr", "add", &host, "dev", "lo"]);
    // What the Internet host sends to these (a floating IP) comes from its own address.
    for dst in sourced {
        let to = format!("{dst}/32");
        topo.ok(
            &ns,
            &["ip", "route", "add", &to, "dev", &vlan, "src", INET_IP],
        );
    }
    (ns, shim)
}
