//! The host effects of a plan, written out as `ip -batch` scripts and an `nft -f` rule set.
//!
//! Generating them here, as plain text, keeps the Linux implementation a thin runner and
//! lets unit tests snapshot exactly what would be applied to the host.

use std::fmt::Write as _;

use crate::plan::{BRIDGE_PREFIX, MachineNetwork, OrgNetwork};

/// The nftables table Hangar owns. Nothing else in the host's rule set is touched.
pub const NFT_TABLE: &str = "hangar";

/// `ip -batch` lines that create an organization's bridge, still down and without
/// addresses, so that its sysctls can be set before the first address appears.
pub fn bridge_create_batch(org: &OrgNetwork) -> String {
    format!(
        "link add {bridge} address {mac} type bridge\n",
        bridge = org.bridge,
        mac = org.bridge_mac()
    )
}

/// `ip -batch` lines that give an existing bridge its gateway addresses and bring it up.
/// `replace` and `nodad` make them idempotent and usable at once.
pub fn bridge_configure_batch(org: &OrgNetwork) -> String {
    let bridge = &org.bridge;
    format!(
        "addr replace {gw4}/{len4} dev {bridge}\n\
         addr replace {gw6}/{len6} dev {bridge} nodad\n\
         link set {bridge} up\n",
        gw4 = org.ipv4_gateway,
        len4 = org.ipv4_subnet.prefix_len(),
        gw6 = org.ipv6_gateway,
        len6 = org.ipv6_subnet.prefix_len(),
    )
}

/// `ip -batch` lines, run in the host namespace, that create the machine's namespace and
/// its veth pair: the host end up on the bridge, the guest end created directly inside the
/// namespace under its final name.
///
/// This and [`machine_netns_batch`] are the `ip` equivalent of what the Linux
/// implementation does in-process over rtnetlink: the readable description its requests are
/// checked against, a recipe for operators, and the benchmark's peer.
pub fn machine_host_batch(m: &MachineNetwork) -> String {
    format!(
        "netns add {netns}\n\
         link add {veth} up master {bridge} type veth peer name {guest} netns {netns}\n",
        netns = m.netns,
        veth = m.host_veth,
        bridge = m.org.bridge,
        guest = m.guest_ifname,
    )
}

/// `ip -n <netns> -batch` lines that configure the inside of a machine's namespace (see
/// [`machine_host_batch`] for how they are used):
/// addresses (IPv6 without duplicate address detection, so it works right away), loopback,
/// the interface, and default routes via the organization's gateways.
pub fn machine_netns_batch(m: &MachineNetwork) -> String {
    format!(
        "addr add {v4}/{len4} dev {guest}\n\
         addr add {v6}/{len6} dev {guest} nodad\n\
         link set lo up\n\
         link set {guest} up\n\
         route add default via {gw4} dev {guest}\n\
         route add default via {gw6} dev {guest}\n",
        v4 = m.ipv4,
        len4 = m.org.ipv4_subnet.prefix_len(),
        v6 = m.ipv6,
        len6 = m.org.ipv6_subnet.prefix_len(),
        guest = m.guest_ifname,
        gw4 = m.org.ipv4_gateway,
        gw6 = m.org.ipv6_gateway,
    )
}

/// The whole `inet hangar` table for the given organization bridges, as one atomic
/// `nft -f` transaction: create the table if missing, delete it, and add it back complete.
/// With no bridges the table is only removed.
///
/// One rule per bridge drops forwarded traffic from that bridge to any other Hangar bridge.
/// A single `iifname "hgbr*" oifname "hgbr*" drop` would also drop traffic between machines
/// of the same organization on hosts where `br_netfilter` is loaded (Docker loads it), since
/// bridged packets then show up in the forward hook with the bridge as both interfaces.
pub fn nft_ruleset(bridges: &[String]) -> String {
    let mut script = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    if bridges.is_empty() {
        return script;
    }
    let _ = writeln!(script, "table inet {NFT_TABLE} {{");
    script.push_str("\tchain forward {\n");
    script.push_str("\t\ttype filter hook forward priority filter; policy accept;\n");
    for bridge in bridges {
        let _ = writeln!(
            script,
            "\t\tiifname \"{bridge}\" oifname \"{BRIDGE_PREFIX}*\" oifname != \"{bridge}\" drop"
        );
    }
    script.push_str("\t}\n}\n");
    script
}

/// Whether an interface name is one of our organization bridges (`hgbr` and digits).
pub fn is_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX)
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NetPool, machine_network, org_network};

    fn machine() -> MachineNetwork {
        let org = org_network(&NetPool::default(), 12).unwrap();
        machine_network(
            &org,
            "3d8d9b1a2c4e6f",
            "172.29.12.2".parse().unwrap(),
            "fdaa:0:c::2".parse().unwrap(),
        )
    }

    #[test]
    fn bridge_batches() {
        let org = org_network(&NetPool::default(), 12).unwrap();
        insta::assert_snapshot!("bridge_create", bridge_create_batch(&org));
        insta::assert_snapshot!("bridge_configure", bridge_configure_batch(&org));
    }

    #[test]
    fn machine_batches() {
        let m = machine();
        insta::assert_snapshot!("machine_host", machine_host_batch(&m));
        insta::assert_snapshot!("machine_netns", machine_netns_batch(&m));
    }

    #[test]
    fn nft_ruleset_for_two_orgs() {
        insta::assert_snapshot!(
            "nft_two_orgs",
            nft_ruleset(&["hgbr1".into(), "hgbr12".into()])
        );
    }

    #[test]
    fn nft_ruleset_without_bridges_only_removes_the_table() {
        assert_eq!(
            nft_ruleset(&[]),
            "table inet hangar\ndelete table inet hangar\n"
        );
    }

    #[test]
    fn bridge_names() {
        for (name, expected) in [
            ("hgbr1", true),
            ("hgbr250", true),
            ("hgbr", false),
            ("hgbrx", false),
            ("hgbr1a", false),
            ("eth0", false),
        ] {
            assert_eq!(is_bridge_name(name), expected, "{name}");
        }
    }
}
