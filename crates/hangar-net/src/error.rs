//! The error type of this crate: each message says what failed and what to do about it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};

/// Everything that can go wrong while planning or applying host networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The organization index does not fit the address pools.
    #[error(
        "organization index {org_index} is out of range: this host's pools ({ipv4_pool}, {ipv6_pool}) hold organizations 1..={max}"
    )]
    OrgIndexOutOfRange {
        org_index: u32,
        max: u32,
        ipv4_pool: Ipv4Net,
        ipv6_pool: Ipv6Net,
    },

    /// The pools are too small to give any organization a /24 and a /48.
    #[error(
        "address pools {ipv4_pool} and {ipv6_pool} are too small: the IPv4 pool must be /24 or larger and the IPv6 pool /48 or larger"
    )]
    PoolTooSmall {
        ipv4_pool: Ipv4Net,
        ipv6_pool: Ipv6Net,
    },

    /// Every IPv4 address of an organization's subnet is taken.
    #[error(
        "no free IPv4 address left in {subnet} (gateway {gateway}): destroy unused machines of this organization"
    )]
    Ipv4Exhausted { subnet: Ipv4Net, gateway: Ipv4Addr },

    /// Every IPv6 address of an organization's subnet is taken.
    #[error(
        "no free IPv6 address left in {subnet} (gateway {gateway}): destroy unused machines of this organization"
    )]
    Ipv6Exhausted { subnet: Ipv6Net, gateway: Ipv6Addr },

    /// A name in a plan is not safe to hand to `ip` (it would not be one argument, or it
    /// could escape `/run/netns`).
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },

    /// A helper program could not be started at all.
    #[error(
        "could not run {program}: {source} (is the {package} package installed? are you root?)"
    )]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: io::Error,
    },

    /// `nft` is not installed, so organizations cannot be isolated from each other.
    #[error(
        "nft not found: install the nftables package (apt-get install nftables); hangar needs it to keep organizations apart"
    )]
    NftMissing,

    /// A helper program ran and reported an error.
    #[error("{what} failed: {stderr} (is iproute2/nftables installed? are you root?)")]
    Command { what: String, stderr: String },

    /// A netlink request inside a machine's network namespace failed.
    #[error("{what} in network namespace {netns} failed: {source} (are you root?)")]
    Netlink {
        what: String,
        netns: String,
        #[source]
        source: io::Error,
    },

    /// A host effect claimed to succeed but left the host in the wrong state.
    #[error("{what}: {detail}")]
    Verify { what: String, detail: String },

    /// Reading or writing a kernel file (sysfs, procfs, /run/netns) failed.
    #[error("{action} {path} failed: {source} (are you root?)")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
