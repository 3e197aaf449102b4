//! Creating a machine's veth pair and configuring the inside of its namespace over
//! rtnetlink, from this process.
//!
//! `ip` would cost a process spawn per step, and `ip -n <netns>` also iproute2's own
//! namespace switch (it unshares a mount namespace and remounts `/sys`): milliseconds on
//! the start path. A netlink socket belongs to the network namespace of the thread that
//! opens it, so the Linux implementation's helper thread opens one in the host namespace
//! and one inside the machine's, and sends a handful of requests: no fork, no helper
//! process, no async runtime.
//!
//! The requests are built by [`veth_request`] and [`netns_requests`], pure functions, so
//! unit tests can check them; [`NetlinkSocket`] sends them and waits for each
//! acknowledgement.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::plan::MachineNetwork;

/// One request: what it does, in `ip` terms for error messages, and the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub what: String,
    pub message: RouteNetlinkMessage,
}

fn address(index: u32, addr: IpAddr, prefix_len: u8, nodad: bool) -> RouteNetlinkMessage {
    let mut message = AddressMessage::default();
    message.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.prefix_len = prefix_len;
    message.header.index = index;
    if nodad {
        message.header.flags = AddressHeaderFlags::Nodad;
    }
    message.attributes = vec![
        AddressAttribute::Local(addr),
        AddressAttribute::Address(addr),
    ];
    RouteNetlinkMessage::NewAddress(message)
}

fn link_up(index: u32) -> RouteNetlinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(message)
}

fn default_route(index: u32, gateway: IpAddr) -> RouteNetlinkMessage {
    let mut message = RouteMessage::default();
    let (family, gateway) = match gateway {
        IpAddr::V4(gw) => (AddressFamily::Inet, RouteAddress::Inet(gw)),
        IpAddr::V6(gw) => (AddressFamily::Inet6, RouteAddress::Inet6(gw)),
    };
    message.header = RouteHeader {
        address_family: family,
        table: RouteHeader::RT_TABLE_MAIN,
        // What `ip route add` sends.
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    message.attributes = vec![RouteAttribute::Gateway(gateway), RouteAttribute::Oif(index)];
    RouteNetlinkMessage::NewRoute(message)
}

/// The request, sent in the host namespace, that creates the machine's veth pair: the host
/// end up and on the bridge, the guest end created directly in the machine's namespace
/// (given as an open file descriptor) under its final name. The equivalent of
/// [`crate::commands::machine_host_batch`]'s `link add`.
pub fn veth_request(m: &MachineNetwork, bridge_index: u32, netns_fd: RawFd) -> Request {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(m.guest_ifname.clone()),
        LinkAttribute::NetNsFd(netns_fd),
    ];
    let mut message = LinkMessage::default();
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes = vec![
        LinkAttribute::IfName(m.host_veth.clone()),
        LinkAttribute::Controller(bridge_index),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    Request {
        what: format!(
            "link add {} up master {} type veth peer name {} netns {}",
            m.host_veth, m.org.bridge, m.guest_ifname, m.netns
        ),
        message: RouteNetlinkMessage::NewLink(message),
    }
}

/// The requests that configure a machine's namespace, in order: the same steps as
/// [`crate::commands::machine_netns_batch`]. `lo_index` and `guest_index` are the interface
/// indexes inside the namespace.
pub fn netns_requests(m: &MachineNetwork, lo_index: u32, guest_index: u32) -> Vec<Request> {
    let guest = &m.guest_ifname;
    let len4 = m.org.ipv4_subnet.prefix_len();
    let len6 = m.org.ipv6_subnet.prefix_len();
    vec![
        Request {
            what: format!("addr add {}/{len4} dev {guest}", m.ipv4),
            message: address(guest_index, IpAddr::V4(m.ipv4), len4, false),
        },
        Request {
            what: format!("addr add {}/{len6} dev {guest} nodad", m.ipv6),
            message: address(guest_index, IpAddr::V6(m.ipv6), len6, true),
        },
        Request {
            what: "link set lo up".to_owned(),
            message: link_up(lo_index),
        },
        Request {
            what: format!("link set {guest} up"),
            message: link_up(guest_index),
        },
        Request {
            what: format!("route add default via {} dev {guest}", m.org.ipv4_gateway),
            message: default_route(guest_index, IpAddr::V4(m.org.ipv4_gateway)),
        },
        Request {
            what: format!("route add default via {} dev {guest}", m.org.ipv6_gateway),
            message: default_route(guest_index, IpAddr::V6(m.org.ipv6_gateway)),
        },
    ]
}

/// A synchronous rtnetlink socket in the calling thread's network namespace.
pub struct NetlinkSocket {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens a socket in the network namespace of the calling thread.
    pub fn open() -> io::Result<NetlinkSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(NetlinkSocket {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(32 * 1024),
        })
    }

    /// Sends one message and returns the replies to it, up to and including the
    /// acknowledgement (for requests with `NLM_F_ACK`) or the first reply otherwise.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut replies = Vec::new();
        // The kernel answers a request with a bounded number of datagrams; anything
        // beyond this many means the exchange went wrong.
        for _ in 0..64 {
            self.buffer.clear();
            let received = self.socket.recv(&mut self.buffer, 0)?;
            if received > self.buffer.len() {
                return Err(io::Error::other("netlink reply larger than 32 KiB"));
            }
            let mut offset = 0;
            while offset < self.buffer.len() {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..])
                        .map_err(|err| {
                            io::Error::new(io::ErrorKind::InvalidData, err.to_string())
                        })?;
                let length = reply.header.length as usize;
                if length == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "empty netlink message",
                    ));
                }
                offset += (length + 3) & !3;
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(replies),
                            Some(_) => Err(err.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        replies.push(inner);
                        if flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(io::Error::other("no netlink acknowledgement"))
    }

    /// The index of the interface with this name.
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut message = LinkMessage::default();
        message.attributes = vec![LinkAttribute::IfName(name.to_owned())];
        let replies = self.exchange(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST)?;
        replies
            .into_iter()
            .find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")))
    }

    /// Deletes the interface with this name (for a veth, both ends). Returns whether it
    /// existed.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let is_absent = |err: &io::Error| err.raw_os_error() == Some(libc_enodev());
        let index = match self.link_index(name) {
            Ok(index) => index,
            Err(err) if err.kind() == io::ErrorKind::NotFound || is_absent(&err) => {
                return Ok(false);
            }
            Err(err) => return Err(err),
        };
        let mut message = LinkMessage::default();
        message.header.index = index;
        match self.exchange(
            RouteNetlinkMessage::DelLink(message),
            NLM_F_REQUEST | NLM_F_ACK,
        ) {
            Ok(_) => Ok(true),
            // Removed by someone else in the meantime.
            Err(err) if is_absent(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Sends a change request and waits for the kernel to acknowledge it.
    pub fn apply(&mut self, request: &Request) -> io::Result<()> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.exchange(request.message.clone(), flags).map(drop)
    }
}

/// `ENODEV`, what the kernel answers for an interface that does not exist.
fn libc_enodev() -> i32 {
    rustix::io::Errno::NODEV.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NetPool, machine_network, org_network};

    #[test]
    fn requests_match_the_ip_batch() {
        let org = org_network(&NetPool::default(), 12).unwrap();
        let m = machine_network(
            &org,
            "3d8d9b1a2c4e6f",
            "172.29.12.2".parse().unwrap(),
            "fdaa:0:c::2".parse().unwrap(),
        );
        let requests = netns_requests(&m, 1, 2);
        let described: Vec<&str> = requests.iter().map(|r| r.what.as_str()).collect();
        let batch = crate::commands::machine_netns_batch(&m);
        assert_eq!(described, batch.lines().collect::<Vec<_>>());
        insta::assert_debug_snapshot!("netns_requests", requests);

        let veth = veth_request(&m, 7, 42);
        assert_eq!(
            Some(veth.what.as_str()),
            crate::commands::machine_host_batch(&m).lines().nth(1)
        );
        insta::assert_debug_snapshot!("veth_request", veth);
    }
}
