//! Host networking for machines: address plans, per-organization bridges, veth pairs and
//! network namespaces.
//!
//! Each organization gets its own Linux bridge, an IPv4 /24 from the host pool and an
//! IPv6 /48 in `fdaa::/16` (Fly's 6PN shape). Each machine gets a network namespace
//! (`/run/netns/hangar-<machine id>`), a veth pair whose host end is on its organization's
//! bridge, one IPv4 and one IPv6 address, loopback up and default routes via the bridge.
//!
//! **API boundary:** address planning ([`plan`]) is pure; every host effect goes through
//! the [`HostNet`] trait, with a real implementation and a recording fake for unit tests.
