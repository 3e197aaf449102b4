//! Root integration tests of `LinuxHostNet`: real bridges, veth pairs, namespaces and
//! nftables. They use organization indexes 248 and 250..=254 and machine ids starting with `fe`,
//! which a running server does not hand out, and guards remove everything even when an
//! assertion fails.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use hangar_net::{
    HostNet, LinuxHostNet, MachineNetwork, NetPool, OrgNetwork, allocate_ipv4, allocate_ipv6,
    machine_network, org_network,
};

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        println!(
            "skipping: hangar-net Linux tests need root (network namespaces, bridges, nftables)"
        );
        false
    }
}

/// A machine id no server hands out (`fe` + pid + counter), unique per test process.
fn test_machine_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("fe{:08x}{:04x}", std::process::id(), n & 0xffff)
}

/// Removes the machines and organizations it knows about when dropped, so a failed
/// assertion leaves nothing behind on the host.
struct Cleanup<'a> {
    net: &'a LinuxHostNet,
    orgs: Vec<OrgNetwork>,
    machines: Vec<MachineNetwork>,
}

impl<'a> Cleanup<'a> {
    fn new(net: &'a LinuxHostNet) -> Self {
        Cleanup {
            net,
            orgs: Vec::new(),
            machines: Vec::new(),
        }
    }

    fn org(&mut self, index: u32) -> Result<OrgNetwork> {
        let org = org_network(&NetPool::default(), index)?;
        self.orgs.push(org.clone());
        self.net.ensure_org(&org)?;
        Ok(org)
    }

    fn machine(&mut self, org: &OrgNetwork) -> Result<MachineNetwork> {
        let m = machine_network(
            org,
            &test_machine_id(),
            allocate_ipv4(org, &BTreeSet::new())?,
            allocate_ipv6(org, &BTreeSet::new())?,
        );
        self.machines.push(m.clone());
        self.net.create_machine(&m)?;
        Ok(m)
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for m in &self.machines {
            if let Err(err) = self.net.destroy_machine(m) {
                eprintln!("cleanup: {err}");
            }
        }
        for org in &self.orgs {
            if let Err(err) = self.net.destroy_org(org) {
                eprintln!("cleanup: {err}");
            }
        }
    }
}

/// Opens a listening socket inside the machine's namespace. The socket is created on a
/// short-lived thread that joins the namespace (`setns` only affects the calling thread);
/// a socket stays in the namespace it was created in, so the test thread can accept on it.
fn listen_in(m: &MachineNetwork) -> Result<TcpListener> {
    let path = m.netns_path.clone();
    std::thread::spawn(move || -> Result<TcpListener> {
        let netns = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        rustix::thread::move_into_link_name_space(
            netns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        // `[::]` accepts IPv4 too (dual-stack), like the test app.
        Ok(TcpListener::bind("[::]:8080")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("listener thread panicked"))?
}

/// Connects from the host to `addr`, has the listener in the machine answer, and returns
/// what the host read.
fn round_trip(listener: &TcpListener, addr: IpAddr) -> Result<String> {
    let target = SocketAddr::new(addr, 8080);
    let mut client = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .with_context(|| format!("connecting to {target} from the host"))?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    // The handshake completed in the kernel's backlog, so accepting now cannot block long;
    // a non-blocking accept polled against a deadline keeps the test bounded regardless.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut server, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            Err(err) => bail!("accepting in the machine namespace: {err}"),
        }
    };
    server.write_all(format!("hello {peer}\n").as_bytes())?;
    drop(server);
    let mut reply = String::new();
    client.read_to_string(&mut reply)?;
    Ok(reply)
}

fn nft_table() -> Result<String> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "hangar"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn assert_machine_gone(net: &LinuxHostNet, m: &MachineNetwork) -> Result<()> {
    ensure!(
        !m.netns_path.exists(),
        "{} still exists",
        m.netns_path.display()
    );
    ensure!(
        !net.link_exists(&m.host_veth),
        "veth {} still exists",
        m.host_veth
    );
    let id = m.netns.trim_start_matches("hangar-");
    ensure!(
        !net.list_machine_netns()?.iter().any(|x| x == id),
        "{id} still listed"
    );
    Ok(())
}

#[test]
fn two_orgs_reachable_separate_and_fully_removed() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let net = LinuxHostNet::new();
    net.check_tools()?;
    let mut guard = Cleanup::new(&net);
    let org_a = guard.org(251)?;
    let org_b = guard.org(252)?;
    let a = guard.machine(&org_a)?;
    let b = guard.machine(&org_b)?;

    let listed = net.list_machine_netns()?;
    for m in [&a, &b] {
        ensure!(
            listed.contains(&m.netns["hangar-".len()..].to_owned()),
            "{} not listed in {listed:?}",
            m.netns
        );
    }
    // Bridges: fixed MAC, no duplicate address detection; and a second instance (a
    // restarted server) accepts the existing bridge.
    for org in [&org_a, &org_b] {
        let mac = fs::read_to_string(format!("/sys/class/net/{}/address", org.bridge))?;
        assert_eq!(mac.trim(), org.bridge_mac());
        let dad = fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{}/accept_dad", org.bridge))?;
        assert_eq!(dad.trim(), "0");
        LinuxHostNet::new().ensure_org(org)?;
    }
    // The machines' IPv6 addresses are usable at once: not tentative (waiting for duplicate
    // address detection), which would delay the first connection by a second or more.
    for m in [&a, &b] {
        let out = Command::new("ip")
            .args(["-n", &m.netns, "-6", "addr", "show", "dev", "eth0"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains(&format!("inet6 {}/64", m.ipv6)),
            "address missing:\n{text}"
        );
        ensure!(
            !text.contains("tentative"),
            "address still tentative:\n{text}"
        );
    }

    // The two host ends sit on their own organization's bridge.
    assert_eq!(net.link_master(&a.host_veth).as_deref(), Some("hgbr251"));
    assert_eq!(net.link_master(&b.host_veth).as_deref(), Some("hgbr252"));

    // Right after creation (no waiting for duplicate address detection), the host reaches
    // each machine over IPv4 and IPv6.
    for m in [&a, &b] {
        let listener = listen_in(m)?;
        for addr in [IpAddr::V4(m.ipv4), IpAddr::V6(m.ipv6)] {
            let reply = round_trip(&listener, addr)?;
            ensure!(
                reply.starts_with("hello "),
                "unexpected reply {reply:?} from {addr}"
            );
        }
    }

    // The firewall keeps the organizations apart.
    let table = nft_table()?;
    for bridge in ["hgbr251", "hgbr252"] {
        let rule = format!("iifname \"{bridge}\" oifname \"hgbr*\" oifname != \"{bridge}\" drop");
        ensure!(table.contains(&rule), "missing {rule:?} in:\n{table}");
    }

    for m in [&a, &b] {
        net.destroy_machine(m)?;
        assert_machine_gone(&net, m)?;
        // Destroying again is fine.
        net.destroy_machine(m)?;
    }
    for org in [&org_a, &org_b] {
        net.destroy_org(org)?;
        ensure!(
            !net.link_exists(&org.bridge),
            "bridge {} still exists",
            org.bridge
        );
        ensure!(
            !nft_table()?.contains(&format!("\"{}\"", org.bridge)),
            "rule of {} left",
            org.bridge
        );
        net.destroy_org(org)?;
    }
    Ok(())
}

#[test]
fn create_replaces_a_half_made_network() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let net = LinuxHostNet::new();
    let mut guard = Cleanup::new(&net);
    let org = org_network(&NetPool::default(), 253)?;
    guard.orgs.push(org.clone());
    let id = test_machine_id();
    let m = machine_network(&org, &id, "172.29.253.7".parse()?, "fdaa:0:fd::7".parse()?);
    guard.machines.push(m.clone());
    // A crash between the two steps leaves a namespace without a veth.
    let status = Command::new("ip")
        .args(["netns", "add", &m.netns])
        .status()?;
    ensure!(status.success(), "ip netns add failed");
    // create_machine also creates the organization's bridge on its own.
    net.create_machine(&m)?;
    assert_eq!(net.link_master(&m.host_veth).as_deref(), Some("hgbr253"));
    let listener = listen_in(&m)?;
    round_trip(&listener, IpAddr::V6(m.ipv6))?;
    drop(listener);
    // Creating it again replaces it rather than failing on "File exists".
    net.create_machine(&m)?;
    let listener = listen_in(&m)?;
    round_trip(&listener, IpAddr::V4(m.ipv4))?;

    // A failure half-way (an address outside the subnet makes the gateway unreachable)
    // reports the step that failed and leaves nothing behind.
    let bad = machine_network(
        &org,
        &test_machine_id(),
        "10.99.0.2".parse()?,
        "fdaa:0:fd::8".parse()?,
    );
    guard.machines.push(bad.clone());
    let err = net.create_machine(&bad).expect_err("gateway unreachable");
    let message = err.to_string();
    ensure!(
        message.starts_with(&format!(
            "route add default via 172.29.253.1 dev eth0 in network namespace {} failed",
            bad.netns
        )),
        "{message}"
    );
    assert_machine_gone(&net, &bad)?;
    Ok(())
}

#[test]
fn destroy_removes_the_veth_while_the_namespace_is_still_held() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let net = LinuxHostNet::new();
    let mut guard = Cleanup::new(&net);
    let org = guard.org(254)?;
    let m = guard.machine(&org)?;
    // A container that has not exited yet keeps the namespace alive, like this open file.
    let holder = fs::File::open(&m.netns_path)?;
    net.destroy_machine(&m)?;
    assert_machine_gone(&net, &m)?;
    drop(holder);
    Ok(())
}

#[test]
fn concurrent_creates_and_destroys_in_one_org() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let net = LinuxHostNet::new();
    let mut guard = Cleanup::new(&net);
    let org = org_network(&NetPool::default(), 250)?;
    guard.orgs.push(org.clone());
    let mut used4 = BTreeSet::new();
    let mut used6 = BTreeSet::new();
    let mut machines = Vec::new();
    for _ in 0..8 {
        let v4 = allocate_ipv4(&org, &used4)?;
        let v6 = allocate_ipv6(&org, &used6)?;
        used4.insert(v4);
        used6.insert(v6);
        let m = machine_network(&org, &test_machine_id(), v4, v6);
        guard.machines.push(m.clone());
        machines.push(m);
    }
    // The first create of an organization also creates its bridge; all of them race for it.
    std::thread::scope(|scope| {
        let handles: Vec<_> = machines
            .iter()
            .map(|m| scope.spawn(|| net.create_machine(m)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("create thread panicked"))
    })?;
    for m in &machines {
        assert_eq!(net.link_master(&m.host_veth).as_deref(), Some("hgbr250"));
        let listener = listen_in(m)?;
        round_trip(&listener, IpAddr::V4(m.ipv4))?;
        round_trip(&listener, IpAddr::V6(m.ipv6))?;
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = machines
            .iter()
            .map(|m| scope.spawn(|| net.destroy_machine(m)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("destroy thread panicked"))
    })?;
    for m in &machines {
        assert_machine_gone(&net, m)?;
    }
    Ok(())
}

#[test]
fn unsafe_names_are_refused_before_touching_the_host() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let net = LinuxHostNet::new();
    let org = org_network(&NetPool::default(), 250)?;
    let m = machine_network(
        &org,
        "../../etc",
        "172.29.250.2".parse()?,
        "fdaa:0:fa::2".parse()?,
    );
    let err = net.create_machine(&m).expect_err("refused");
    ensure!(
        err.to_string()
            .starts_with("invalid network namespace name"),
        "{err}"
    );
    ensure!(
        !net.link_exists(&org.bridge),
        "the bridge must not be created for a refused machine"
    );
    ensure!(!Path::new("/run/netns/hangar-..").exists());
    Ok(())
}

#[test]
fn missing_programs_give_a_clear_error() -> Result<()> {
    // Needs no root: nothing on the host is touched.
    let net = LinuxHostNet::with_programs("/nonexistent/ip", "/nonexistent/nft");
    let err = net.check_tools().expect_err("no ip");
    ensure!(
        err.to_string()
            .contains("is the iproute2 package installed?"),
        "{err}"
    );
    let net = LinuxHostNet::with_programs("ip", "/nonexistent/nft");
    let err = net.check_tools().expect_err("no nft");
    ensure!(
        err.to_string().contains("install the nftables package"),
        "{err}"
    );
    Ok(())
}

/// Set in the child process that runs [`teardown_all_removes_everything`] in private
/// namespaces.
const ISOLATED_ENV: &str = "HANGAR_NET_TEST_ISOLATED";

/// `teardown_all` removes every Hangar namespace, bridge and the nftables table on the host,
/// which would break a server or other tests running alongside. So the test re-runs itself
/// under `unshare` in a private network namespace (own bridges, own nftables) and a private
/// mount namespace with its own sysfs (own /sys/class/net) and a tmpfs on /run/netns (own
/// namespace names).
#[test]
fn teardown_all_removes_everything() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    if std::env::var_os(ISOLATED_ENV).is_none() {
        let exe = std::env::current_exe()?;
        let output = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
            .arg(concat!(
                // sysfs shows the interfaces of the namespace it was mounted in.
                "mount -t sysfs sysfs /sys && ",
                "mkdir -p /run/netns && mount -t tmpfs hangar-test /run/netns && ",
                r#"exec "$0" --exact teardown_all_removes_everything --nocapture"#
            ))
            .arg(exe)
            .env(ISOLATED_ENV, "1")
            .output()
            .context("running unshare (util-linux)")?;
        ensure!(
            output.status.success(),
            "isolated teardown test failed: {}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        return Ok(());
    }

    let net = LinuxHostNet::new();
    let mut guard = Cleanup::new(&net);
    let org_a = guard.org(251)?;
    let org_b = guard.org(252)?;
    let a = guard.machine(&org_a)?;
    let b = guard.machine(&org_b)?;
    ensure!(nft_table()?.contains("hgbr252"));
    // A leftover namespace of a machine the store no longer knows.
    let orphan = format!("hangar-{}", test_machine_id());
    ensure!(
        Command::new("ip")
            .args(["netns", "add", &orphan])
            .status()?
            .success()
    );
    assert_eq!(net.list_machine_netns()?.len(), 3);

    net.teardown_all()?;
    assert_eq!(net.list_machine_netns()?, Vec::<String>::new());
    for m in [&a, &b] {
        assert_machine_gone(&net, m)?;
    }
    assert_eq!(net.hangar_bridges()?, Vec::<String>::new());
    let out = Command::new("nft").args(["list", "tables"]).output()?;
    let tables = String::from_utf8_lossy(&out.stdout);
    ensure!(!tables.contains("hangar"), "table left: {tables}");
    // Tearing down an empty host is fine too.
    net.teardown_all()?;
    Ok(())
}
