//! Address plans: which subnets an organization gets, which names and addresses a machine
//! gets, and IPAM. Everything here is pure; the store persists allocations and the
//! [`HostNet`](crate::HostNet) implementations apply the plan.
//!
//! **Invariant:** every name derived here is a valid Linux interface or namespace name
//! (at most 15 bytes for interfaces), and the same inputs always give the same names, so a
//! restarted server finds what an earlier run created.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::NetError;

/// The prefix of every organization bridge: `hgbr<org index>`.
pub const BRIDGE_PREFIX: &str = "hgbr";
/// The prefix of every machine network namespace: `hangar-<machine id>`.
pub const NETNS_PREFIX: &str = "hangar-";
/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// The interface name of a machine's end of its veth pair, inside its namespace.
pub const GUEST_IFNAME: &str = "eth0";
/// Prefix length of an organization's IPv4 subnet.
pub const ORG_IPV4_PREFIX_LEN: u8 = 24;
/// Prefix length of an organization's IPv6 network (Fly's 6PN shape).
pub const ORG_IPV6_PREFIX_LEN: u8 = 48;
/// Prefix length of the part of an organization's IPv6 network that lives on this host.
pub const HOST_IPV6_PREFIX_LEN: u8 = 64;
/// The highest organization index we hand out, whatever the pool size: it keeps bridge
/// names short and MAC addresses derivable from the index.
pub const MAX_ORG_INDEX: u32 = u16::MAX as u32;

/// Address pools of this host: defaults 172.29.0.0/16 (a /24 per organization) and
/// fdaa::/16 (a /48 per organization).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPool {
    pub ipv4: Ipv4Net,
    pub ipv6: Ipv6Net,
}

impl Default for NetPool {
    fn default() -> Self {
        NetPool {
            ipv4: Ipv4Net::new(Ipv4Addr::new(172, 29, 0, 0), 16).expect("/16 is a valid prefix"),
            ipv6: Ipv6Net::new(Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 0), 16)
                .expect("/16 is a valid prefix"),
        }
    }
}

/// One organization's network on this host. `org_index` is a small number the store
/// assigns to each organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgNetwork {
    pub org_index: u32,
    /// `hgbr<index>`.
    pub bridge: String,
    pub ipv4_subnet: Ipv4Net,
    pub ipv4_gateway: Ipv4Addr,
    /// The organization's /48.
    pub ipv6_prefix: Ipv6Net,
    /// The /64 of it that lives on this host.
    pub ipv6_subnet: Ipv6Net,
    pub ipv6_gateway: Ipv6Addr,
}

impl OrgNetwork {
    /// A fixed, locally administered MAC address for the bridge. Without one, Linux gives a
    /// bridge the lowest MAC of its ports, so the gateway's MAC would change whenever a
    /// machine comes or goes and machines would keep sending to a stale one.
    pub fn bridge_mac(&self) -> String {
        let [_, _, hi, lo] = self.org_index.to_be_bytes();
        format!("02:68:67:62:{hi:02x}:{lo:02x}")
    }
}

/// The largest organization index the pool can hold.
pub fn max_org_index(pool: &NetPool) -> Result<u32, NetError> {
    let v4_bits = ORG_IPV4_PREFIX_LEN
        .checked_sub(pool.ipv4.prefix_len())
        .ok_or(NetError::PoolTooSmall {
            ipv4_pool: pool.ipv4,
            ipv6_pool: pool.ipv6,
        })?;
    let v6_bits = ORG_IPV6_PREFIX_LEN
        .checked_sub(pool.ipv6.prefix_len())
        .ok_or(NetError::PoolTooSmall {
            ipv4_pool: pool.ipv4,
            ipv6_pool: pool.ipv6,
        })?;
    let bits = u32::from(v4_bits.min(v6_bits));
    // Index 0 is never used, so that the first /24 of the pool (often its "network") stays
    // free; a pool of exactly one /24 therefore holds no organization.
    let count = 1u64.checked_shl(bits).unwrap_or(u64::MAX);
    let max = count.saturating_sub(1).min(u64::from(MAX_ORG_INDEX));
    if max == 0 {
        return Err(NetError::PoolTooSmall {
            ipv4_pool: pool.ipv4,
            ipv6_pool: pool.ipv6,
        });
    }
    Ok(u32::try_from(max).expect("capped at MAX_ORG_INDEX"))
}

/// The network of organization `org_index`: its `org_index`-th /24 and /48 of the pools.
pub fn org_network(pool: &NetPool, org_index: u32) -> Result<OrgNetwork, NetError> {
    let max = max_org_index(pool)?;
    if org_index == 0 || org_index > max {
        return Err(NetError::OrgIndexOutOfRange {
            org_index,
            max,
            ipv4_pool: pool.ipv4,
            ipv6_pool: pool.ipv6,
        });
    }
    let v4_base = u32::from(pool.ipv4.network());
    let v4_net = Ipv4Addr::from(v4_base + (org_index << (32 - u32::from(ORG_IPV4_PREFIX_LEN))));
    let ipv4_subnet = Ipv4Net::new(v4_net, ORG_IPV4_PREFIX_LEN).expect("valid prefix length");

    let v6_base = u128::from(pool.ipv6.network());
    let v6_net =
        Ipv6Addr::from(v6_base + (u128::from(org_index) << (128 - u32::from(ORG_IPV6_PREFIX_LEN))));
    let ipv6_prefix = Ipv6Net::new(v6_net, ORG_IPV6_PREFIX_LEN).expect("valid prefix length");
    // This host uses the first /64 of the organization's /48; the rest is left for other
    // hosts of a future multi-host setup.
    let ipv6_subnet = Ipv6Net::new(v6_net, HOST_IPV6_PREFIX_LEN).expect("valid prefix length");

    Ok(OrgNetwork {
        org_index,
        bridge: format!("{BRIDGE_PREFIX}{org_index}"),
        ipv4_gateway: Ipv4Addr::from(u32::from(v4_net) + 1),
        ipv4_subnet,
        ipv6_prefix,
        ipv6_gateway: Ipv6Addr::from(u128::from(v6_net) + 1),
        ipv6_subnet,
    })
}

/// Everything about one machine's network, derivable from (org, machine id, addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineNetwork {
    /// `hangar-<machine id>`.
    pub netns: String,
    /// `/run/netns/hangar-<machine id>`: what runc's `linux.namespaces` points at.
    pub netns_path: PathBuf,
    /// The host end of the veth pair (at most 15 bytes, derived from the id).
    pub host_veth: String,
    /// The machine's end, inside the namespace: `eth0`.
    pub guest_ifname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub org: OrgNetwork,
}

/// The network of one machine. `machine_id` should be a valid machine id (14 lowercase hex
/// characters); other ids still give valid interface names, and the Linux implementation
/// refuses namespace names that are not plain `[a-z0-9-]`.
pub fn machine_network(
    org: &OrgNetwork,
    machine_id: &str,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
) -> MachineNetwork {
    let netns = format!("{NETNS_PREFIX}{machine_id}");
    MachineNetwork {
        netns_path: PathBuf::from(NETNS_DIR).join(&netns),
        netns,
        host_veth: host_veth_name(machine_id),
        guest_ifname: GUEST_IFNAME.to_owned(),
        ipv4,
        ipv6,
        org: org.clone(),
    }
}

/// The host-side veth name of a machine: `h` and the 14 hex characters of its id, which is
/// exactly the 15-byte limit of Linux interface names. Ids of another shape are hashed
/// (FNV-1a, stable across Rust releases unlike `DefaultHasher`) down to 14 hex characters.
pub fn host_veth_name(machine_id: &str) -> String {
    let is_machine_id = machine_id.len() == 14
        && machine_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if is_machine_id {
        format!("h{machine_id}")
    } else {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in machine_id.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("h{:014x}", hash & 0x00ff_ffff_ffff_ffff)
    }
}

/// IPAM: the lowest free IPv4 address of the organization's subnet, given the ones in use.
/// Never the network, gateway or broadcast address.
pub fn allocate_ipv4(org: &OrgNetwork, in_use: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
    let subnet = org.ipv4_subnet;
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|addr| *addr != org.ipv4_gateway && !in_use.contains(addr))
        .ok_or(NetError::Ipv4Exhausted {
            subnet,
            gateway: org.ipv4_gateway,
        })
}

/// IPAM: the lowest free IPv6 address of the organization's host subnet, given the ones in
/// use. Never the subnet-router anycast address (the network address) or the gateway.
pub fn allocate_ipv6(org: &OrgNetwork, in_use: &BTreeSet<Ipv6Addr>) -> Result<Ipv6Addr, NetError> {
    let subnet = org.ipv6_subnet;
    let first = u128::from(subnet.network()) + 1;
    let last = u128::from(subnet.broadcast());
    // The lowest free address is at most (addresses in use in the subnet + gateway) past the
    // first one, so the search is bounded by the size of `in_use`, not by the /64.
    let taken = in_use.range(subnet.network()..=subnet.broadcast()).count() as u128;
    let bound = last.min(first.saturating_add(taken + 1));
    (first..=bound)
        .map(Ipv6Addr::from)
        .find(|addr| *addr != org.ipv6_gateway && !in_use.contains(addr))
        .ok_or(NetError::Ipv6Exhausted {
            subnet,
            gateway: org.ipv6_gateway,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn org(index: u32) -> OrgNetwork {
        org_network(&NetPool::default(), index).expect("valid org index")
    }

    #[test]
    fn default_pool_plan_matches_fly_shape() {
        insta::assert_yaml_snapshot!("org_5", org(5));
    }

    #[test]
    fn org_indexes_outside_the_pool_are_refused_with_the_range() {
        let pool = NetPool::default();
        for bad in [0, 256, 1000, u32::MAX] {
            let err = org_network(&pool, bad).expect_err("out of range");
            assert_eq!(
                err.to_string(),
                format!(
                    "organization index {bad} is out of range: this host's pools (172.29.0.0/16, fdaa::/16) hold organizations 1..=255"
                )
            );
        }
        assert_eq!(org(255).ipv4_subnet.to_string(), "172.29.255.0/24");
        assert_eq!(org(255).ipv6_prefix.to_string(), "fdaa:0:ff::/48");
    }

    #[test]
    fn pools_smaller_than_one_org_are_refused() {
        let small_v4 = NetPool {
            ipv4: "10.0.0.0/25".parse().unwrap(),
            ..NetPool::default()
        };
        let err = org_network(&small_v4, 1).expect_err("too small");
        assert!(
            err.to_string().contains("IPv4 pool must be /24 or larger"),
            "{err}"
        );
        let one_v4 = NetPool {
            ipv4: "10.0.0.0/24".parse().unwrap(),
            ..NetPool::default()
        };
        assert!(org_network(&one_v4, 1).is_err());
        let two_v4 = NetPool {
            ipv4: "10.0.0.0/23".parse().unwrap(),
            ..NetPool::default()
        };
        assert_eq!(
            org_network(&two_v4, 1).unwrap().ipv4_subnet.to_string(),
            "10.0.1.0/24"
        );
        let small_v6 = NetPool {
            ipv6: "fdaa::/56".parse().unwrap(),
            ..NetPool::default()
        };
        assert!(org_network(&small_v6, 1).is_err());
    }

    #[test]
    fn large_pools_are_capped_at_the_maximum_index() {
        let pool = NetPool {
            ipv4: "10.0.0.0/8".parse().unwrap(),
            ..NetPool::default()
        };
        assert_eq!(max_org_index(&pool).unwrap(), MAX_ORG_INDEX);
        let last = org_network(&pool, MAX_ORG_INDEX).unwrap();
        assert_eq!(last.ipv4_subnet.to_string(), "10.255.255.0/24");
        assert_eq!(last.bridge, "hgbr65535");
        assert_eq!(last.bridge_mac(), "02:68:67:62:ff:ff");
    }

    #[test]
    fn machine_names_are_derived_from_the_id() {
        let m = machine_network(
            &org(7),
            "0123456789abcd",
            "172.29.7.2".parse().unwrap(),
            "fdaa:0:7::2".parse().unwrap(),
        );
        insta::assert_yaml_snapshot!("machine_in_org_7", m);
    }

    #[test]
    fn veth_names_fit_the_kernel_limit_for_any_id() {
        assert_eq!(host_veth_name("0123456789abcd"), "h0123456789abcd");
        for id in ["", "x", "ABCDEF0123456789", "0123456789abcde", "../../etc"] {
            let name = host_veth_name(id);
            assert_eq!(name.len(), 15, "{id:?} -> {name}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
        }
        assert_ne!(host_veth_name("machine-a"), host_veth_name("machine-b"));
    }

    #[test]
    fn ipv4_allocation_skips_network_gateway_and_used() {
        let org = org(3);
        let mut used = BTreeSet::new();
        assert_eq!(
            allocate_ipv4(&org, &used).unwrap(),
            Ipv4Addr::new(172, 29, 3, 2)
        );
        used.insert(Ipv4Addr::new(172, 29, 3, 2));
        used.insert(Ipv4Addr::new(172, 29, 3, 4));
        assert_eq!(
            allocate_ipv4(&org, &used).unwrap(),
            Ipv4Addr::new(172, 29, 3, 3)
        );
    }

    #[test]
    fn ipv4_exhaustion_is_a_clear_error() {
        let org = org(3);
        let used: BTreeSet<Ipv4Addr> = (2..=254).map(|n| Ipv4Addr::new(172, 29, 3, n)).collect();
        let err = allocate_ipv4(&org, &used).expect_err("exhausted");
        assert_eq!(
            err.to_string(),
            "no free IPv4 address left in 172.29.3.0/24 (gateway 172.29.3.1): destroy unused machines of this organization"
        );
    }

    #[test]
    fn ipv6_exhaustion_is_a_clear_error_for_tiny_subnets() {
        let mut org = org(3);
        org.ipv6_subnet = "fdaa:0:3::/126".parse().unwrap();
        let used: BTreeSet<Ipv6Addr> = ["fdaa:0:3::2", "fdaa:0:3::3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let err = allocate_ipv6(&org, &used).expect_err("exhausted");
        assert!(
            err.to_string()
                .starts_with("no free IPv6 address left in fdaa:0:3::/126"),
            "{err}"
        );
    }

    #[test]
    fn ipv6_allocation_ignores_addresses_of_other_subnets() {
        let org = org(3);
        let used: BTreeSet<Ipv6Addr> = ["fdaa:0:2::2", "fdaa:0:3::2", "fdaa:0:4::3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            allocate_ipv6(&org, &used).unwrap(),
            "fdaa:0:3::3".parse::<Ipv6Addr>().unwrap()
        );
    }

    proptest! {
        #[test]
        fn ipv4_allocations_are_unique_and_valid(index in 1u32..=255, seed in proptest::collection::btree_set(2u8..=254, 0..253), rounds in 1usize..40) {
            let org = org(index);
            let base = u32::from(org.ipv4_subnet.network());
            let mut used: BTreeSet<Ipv4Addr> = seed.iter().map(|n| Ipv4Addr::from(base + u32::from(*n))).collect();
            for _ in 0..rounds {
                match allocate_ipv4(&org, &used) {
                    Ok(addr) => {
                        prop_assert!(org.ipv4_subnet.contains(&addr));
                        prop_assert_ne!(addr, org.ipv4_subnet.network());
                        prop_assert_ne!(addr, org.ipv4_subnet.broadcast());
                        prop_assert_ne!(addr, org.ipv4_gateway);
                        prop_assert!(used.insert(addr), "{} handed out twice", addr);
                    }
                    Err(NetError::Ipv4Exhausted { .. }) => {
                        prop_assert_eq!(used.len(), 253);
                        break;
                    }
                    Err(other) => prop_assert!(false, "unexpected error {}", other),
                }
            }
        }

        #[test]
        fn ipv6_allocations_are_unique_and_valid(index in 1u32..=255, seed in proptest::collection::btree_set(0u16..600, 0..200), rounds in 1usize..40) {
            let org = org(index);
            let base = u128::from(org.ipv6_subnet.network());
            let mut used: BTreeSet<Ipv6Addr> = seed.iter().map(|n| Ipv6Addr::from(base + u128::from(*n))).collect();
            for _ in 0..rounds {
                let addr = allocate_ipv6(&org, &used).expect("a /64 does not run out");
                prop_assert!(org.ipv6_subnet.contains(&addr));
                prop_assert!(org.ipv6_prefix.contains(&addr));
                prop_assert_ne!(addr, org.ipv6_subnet.network());
                prop_assert_ne!(addr, org.ipv6_gateway);
                // The lowest free one: everything below it is taken or reserved.
                let lower_free = (u128::from(org.ipv6_subnet.network()) + 1..u128::from(addr))
                    .map(Ipv6Addr::from)
                    .any(|a| a != org.ipv6_gateway && !used.contains(&a));
                prop_assert!(!lower_free);
                prop_assert!(used.insert(addr), "{} handed out twice", addr);
            }
        }

        #[test]
        fn org_networks_never_overlap(a in 1u32..=255, b in 1u32..=255) {
            prop_assume!(a != b);
            let (x, y) = (org(a), org(b));
            prop_assert!(!x.ipv4_subnet.contains(&y.ipv4_subnet.network()));
            prop_assert!(!x.ipv6_prefix.contains(&y.ipv6_prefix.network()));
            prop_assert_ne!(&x.bridge, &y.bridge);
            prop_assert_ne!(x.bridge_mac(), y.bridge_mac());
        }
    }
}
