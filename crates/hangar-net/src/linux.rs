//! The real [`HostNet`]: runs `ip` (iproute2) and `nft` (nftables) with batch scripts from
//! [`crate::commands`].
//!
//! Why helper programs and not netlink from this process: creating a named network
//! namespace needs `unshare(CLONE_NEWNET)` plus a bind mount, which in a multi-threaded
//! daemon means either a fork without exec (unsafe with other threads' locks) or unsafe
//! code; `ip netns add` does it in its own process. With `-batch`, creating a machine's
//! network costs one process spawn (namespace and veth pair) and destroying it one. The
//! inside of the namespace (sysctls, addresses, links, routes) is configured from a
//! short-lived thread that has joined the namespace with `setns`, over rtnetlink
//! ([`crate::netlink`]): no fork, and no other thread is affected.
//!
//! Existence checks read `/sys/class/net` and `/run/netns`, so `/sys` must be mounted from
//! the server's own network namespace (it is, unless the server runs in an unusual
//! container).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, ErrorKind, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::NetError;
use crate::commands::{bridge_configure_batch, bridge_create_batch, is_bridge_name, nft_ruleset};
use crate::host::HostNet;
use crate::netlink::{NetlinkSocket, netns_requests, veth_request};
use crate::plan::{MachineNetwork, NETNS_DIR, NETNS_PREFIX, OrgNetwork, host_veth_name};

/// The host implementation of [`HostNet`]. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN),
/// `ip` from iproute2 and `nft` from nftables.
#[derive(Debug)]
pub struct LinuxHostNet {
    ip: PathBuf,
    nft: PathBuf,
    netns_dir: PathBuf,
    sys_class_net: PathBuf,
    /// Bridges this process has fully set up (addresses and firewall). It makes
    /// `ensure_org` on the machine start path a single `stat` instead of two helper runs,
    /// and it serialises organization changes so two starts cannot race to create a bridge.
    ensured: Mutex<BTreeSet<String>>,
    /// A lock file shared by every Hangar process on the host (a server and root tests may
    /// run side by side): the nftables table is rebuilt from the list of bridges, so two
    /// processes changing bridges at once could otherwise each write a stale list.
    host_lock_path: PathBuf,
    /// Whether this process has made `/run/netns` a shared mount point.
    netns_dir_ready: Mutex<bool>,
}

/// Where the host-wide lock of bridge and firewall changes lives.
pub const HOST_LOCK_PATH: &str = "/run/hangar-net.lock";

impl Default for LinuxHostNet {
    fn default() -> Self {
        Self::new()
    }
}

impl LinuxHostNet {
    /// Uses `ip` and `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_programs("ip", "nft")
    }

    /// Uses the given `ip` and `nft` programs (for hosts where they are not on `PATH`).
    pub fn with_programs(ip: impl Into<PathBuf>, nft: impl Into<PathBuf>) -> Self {
        LinuxHostNet {
            ip: ip.into(),
            nft: nft.into(),
            netns_dir: PathBuf::from(NETNS_DIR),
            sys_class_net: PathBuf::from("/sys/class/net"),
            ensured: Mutex::new(BTreeSet::new()),
            host_lock_path: PathBuf::from(HOST_LOCK_PATH),
            netns_dir_ready: Mutex::new(false),
        }
    }

    /// Checks that `ip` and `nft` can be run, so `hangar server` can refuse to start with
    /// a clear message instead of failing on the first machine.
    pub fn check_tools(&self) -> Result<(), NetError> {
        self.run(&self.ip, &["-V"], "", "ip -V", "iproute2")?;
        match self.run(&self.nft, &["--version"], "", "nft --version", "nftables") {
            Err(NetError::Spawn { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Err(NetError::NftMissing)
            }
            other => other,
        }
    }

    /// Whether a network interface of this name exists in the host namespace.
    pub fn link_exists(&self, name: &str) -> bool {
        self.sys_class_net.join(name).exists()
    }

    /// The bridge a host interface is attached to, if any.
    pub fn link_master(&self, name: &str) -> Option<String> {
        let target = fs::read_link(self.sys_class_net.join(name).join("master")).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The organization bridges that exist on the host, sorted.
    pub fn hangar_bridges(&self) -> Result<Vec<String>, NetError> {
        let entries = fs::read_dir(&self.sys_class_net).map_err(|source| NetError::Io {
            action: "listing",
            path: self.sys_class_net.clone(),
            source,
        })?;
        let mut bridges: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| is_bridge_name(name))
            .collect();
        bridges.sort_by_key(|name| (name.len(), name.clone()));
        Ok(bridges)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.ensured.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the host-wide lock; it is released when the returned file is dropped.
    fn host_lock(&self) -> Result<fs::File, NetError> {
        let io_error = |action, source| NetError::Io {
            action,
            path: self.host_lock_path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.host_lock_path)
            .map_err(|source| io_error("opening", source))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|errno| io_error("locking", errno.into()))?;
        Ok(file)
    }

    /// Runs a program with `stdin` as its input; a non-zero exit becomes an error carrying
    /// its standard error.
    fn run(
        &self,
        program: &Path,
        args: &[&str],
        stdin: &str,
        what: &str,
        package: &'static str,
    ) -> Result<(), NetError> {
        let mut child = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetError::Spawn {
                program: program.display().to_string(),
                package,
                source,
            })?;
        let mut input = child.stdin.take().expect("stdin is piped");
        // A write error means the program exited early; its exit status and standard
        // error below say why, so the write error itself adds nothing.
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        let output = child.wait_with_output().map_err(|source| NetError::Spawn {
            program: program.display().to_string(),
            package,
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        Err(NetError::Command {
            what: what.to_owned(),
            stderr: if stderr.is_empty() {
                output.status.to_string()
            } else {
                stderr.replace('\n', "; ")
            },
        })
    }

    fn ip_batch(&self, netns: Option<&str>, batch: &str, what: &str) -> Result<(), NetError> {
        let mut args = Vec::with_capacity(4);
        if let Some(netns) = netns {
            args.extend(["-n", netns]);
        }
        args.extend(["-batch", "-"]);
        tracing::debug!(netns, batch, "ip -batch");
        self.run(&self.ip, &args, batch, what, "iproute2")
    }

    /// Replaces the `inet hangar` table with the rules for these bridges.
    fn apply_nft(&self, bridges: &[String]) -> Result<(), NetError> {
        let ruleset = nft_ruleset(bridges);
        tracing::debug!(%ruleset, "nft -f -");
        let what = "nft -f - (replacing table inet hangar)";
        match self.run(&self.nft, &["-f", "-"], &ruleset, what, "nftables") {
            Err(NetError::Spawn { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Err(NetError::NftMissing)
            }
            other => other,
        }
    }

    /// Like [`Self::apply_nft`] on the removal paths, where a host without `nft` cannot
    /// hold a table of ours (`ensure_org` would have failed), so there is nothing to remove.
    fn apply_nft_removing(&self, bridges: &[String]) -> Result<(), NetError> {
        match self.apply_nft(bridges) {
            Err(NetError::NftMissing) => {
                tracing::warn!("nft is not installed; no hangar firewall table to remove");
                Ok(())
            }
            other => other,
        }
    }

    /// Turns off duplicate address detection on a bridge before it gets addresses or goes
    /// up, so its link-local address is usable at once too (the gateway address has
    /// `nodad` anyway).
    fn disable_dad(&self, bridge: &str) -> Result<(), NetError> {
        let path = Path::new("/proc/sys/net/ipv6/conf")
            .join(bridge)
            .join("accept_dad");
        match fs::write(&path, "0\n") {
            Ok(()) => Ok(()),
            // IPv6 is disabled on this host: adding the gateway address reports that.
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetError::Io {
                action: "writing",
                path,
                source,
            }),
        }
    }

    /// Makes the namespace directory a shared mount point, as `ip netns add` does, so
    /// namespace mounts made here propagate to other mount namespaces and `ip netns` treats
    /// them as its own. Done once per process.
    fn prepare_netns_dir(&self) -> Result<(), NetError> {
        use rustix::mount::{MountPropagationFlags, mount_bind_recursive, mount_change};
        let mut ready = self
            .netns_dir_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *ready {
            return Ok(());
        }
        let dir = &self.netns_dir;
        let io_error = |action, source| NetError::Io {
            action,
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(|source| io_error("creating", source))?;
        let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
        if let Err(errno) = mount_change(dir, shared) {
            if errno != rustix::io::Errno::INVAL {
                return Err(io_error("making a shared mount of", errno.into()));
            }
            // Not a mount point yet: make it one, then shared.
            mount_bind_recursive(dir, dir).map_err(|e| io_error("bind-mounting", e.into()))?;
            mount_change(dir, shared)
                .map_err(|e| io_error("making a shared mount of", e.into()))?;
        }
        *ready = true;
        Ok(())
    }

    /// Creates and configures a machine's namespace and veth pair without helper
    /// processes, on one short-lived thread:
    ///
    /// 1. it opens a netlink socket while still in the host namespace (a socket stays in
    ///    the namespace it was opened in);
    /// 2. `unshare(CLONE_NEWNET)` gives the thread a fresh namespace, which a bind mount of
    ///    `/proc/thread-self/ns/net` on `/run/netns/<name>` keeps alive after the thread
    ///    exits (what `ip netns add` does);
    /// 3. it turns off IPv6 duplicate address detection for `all` and `default` before the
    ///    guest interface exists (the kernel skips DAD only when both `all` and the
    ///    interface say so), so no address is ever "tentative" (sysctl files under
    ///    `/proc/sys/net` belong to the namespace of the thread that opens them);
    /// 4. through the host socket, it creates the veth pair with the guest end directly in
    ///    the new namespace;
    /// 5. through a second socket, opened inside, it adds addresses, brings the links up
    ///    and adds the default routes ([`crate::netlink::netns_requests`]).
    ///
    /// Only the helper thread changes namespace; no fork, no other thread affected.
    fn build_machine_netns(&self, m: &MachineNetwork) -> Result<(), NetError> {
        self.prepare_netns_dir()?;
        let path = &m.netns_path;
        let io_error = |action, path: &Path, source| NetError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(path)
            .map_err(|source| io_error("creating the namespace mount point", path, source))?;
        let netlink_error = |what: String, netns: &str, source: io::Error| NetError::Netlink {
            what,
            netns: netns.to_owned(),
            source,
        };
        let work = || -> Result<(), NetError> {
            let mut host = NetlinkSocket::open()
                .map_err(|e| netlink_error("opening a netlink socket".into(), "of the host", e))?;
            let bridge = host.link_index(&m.org.bridge).map_err(|e| {
                netlink_error(format!("finding bridge {}", m.org.bridge), "of the host", e)
            })?;

            #[allow(deprecated)]
            // rustix deprecates its safe `unshare` because `CLONE_FILES` can break file
            // descriptor ownership across threads; `CLONE_NEWNET` alone only changes this
            // thread's network namespace, which is sound.
            rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET)
                .map_err(|e| io_error("unsharing the network namespace for", path, e.into()))?;
            let own_netns = Path::new("/proc/thread-self/ns/net");
            rustix::mount::mount_bind(own_netns, path)
                .map_err(|e| io_error("bind-mounting the new namespace on", path, e.into()))?;

            for conf in ["all", "default"] {
                let sysctl = Path::new("/proc/sys/net/ipv6/conf")
                    .join(conf)
                    .join("accept_dad");
                match fs::write(&sysctl, "0\n") {
                    Ok(()) => {}
                    // IPv6 is disabled: adding the IPv6 address reports that.
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(source) => return Err(io_error("writing", &sysctl, source)),
                }
            }

            let netns_fd =
                fs::File::open(own_netns).map_err(|e| io_error("opening", own_netns, e))?;
            let veth = veth_request(m, bridge, netns_fd.as_raw_fd());
            host.apply(&veth)
                .map_err(|e| netlink_error(veth.what, "of the host", e))?;

            let mut inside = NetlinkSocket::open()
                .map_err(|e| netlink_error("opening a netlink socket".into(), &m.netns, e))?;
            let lo = inside
                .link_index("lo")
                .map_err(|e| netlink_error("finding lo".into(), &m.netns, e))?;
            let guest = inside
                .link_index(&m.guest_ifname)
                .map_err(|e| netlink_error(format!("finding {}", m.guest_ifname), &m.netns, e))?;
            for request in netns_requests(m, lo, guest) {
                inside
                    .apply(&request)
                    .map_err(|e| netlink_error(request.what, &m.netns, e))?;
            }
            Ok(())
        };
        std::thread::scope(|scope| scope.spawn(work).join()).unwrap_or_else(|_| {
            Err(NetError::Verify {
                what: format!("creating network namespace {}", m.netns),
                detail: "the helper thread panicked".to_owned(),
            })
        })
    }

    fn netns_exists(&self, netns: &str) -> bool {
        fs::symlink_metadata(self.netns_dir.join(netns)).is_ok()
    }

    /// Removes a machine's veth and namespace by name; absent parts are fine. Works in
    /// this process, without helpers: the veth is deleted over rtnetlink (which deletes both
    /// ends, even while a process still holds the namespace), and the namespace's name is
    /// unmounted and unlinked, as `ip netns del` does. Then checks the result, which also
    /// makes a concurrent removal harmless.
    fn destroy_names(&self, veth: &str, netns: &str) -> Result<(), NetError> {
        let netns_path = self.netns_dir.join(netns);
        let mut first_error = None;
        if self.link_exists(veth) {
            let deleted = NetlinkSocket::open().and_then(|mut socket| socket.delete_link(veth));
            if let Err(source) = deleted {
                first_error.get_or_insert(NetError::Netlink {
                    what: format!("deleting veth {veth}"),
                    netns: "of the host".to_owned(),
                    source,
                });
            }
        }
        if self.netns_exists(netns) {
            // Not a mount point (a half-made namespace) or already gone are both fine: the
            // file is what matters.
            match rustix::mount::unmount(&netns_path, rustix::mount::UnmountFlags::DETACH) {
                Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
                Err(errno) => {
                    first_error.get_or_insert(NetError::Io {
                        action: "unmounting",
                        path: netns_path.clone(),
                        source: errno.into(),
                    });
                }
            }
            match fs::remove_file(&netns_path) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    first_error.get_or_insert(NetError::Io {
                        action: "removing",
                        path: netns_path.clone(),
                        source,
                    });
                }
            }
        }
        let veth_left = self.link_exists(veth);
        let netns_left = self.netns_exists(netns);
        if !veth_left && !netns_left {
            return Ok(());
        }
        let detail = first_error.map_or_else(|| "no error reported".to_owned(), |e| e.to_string());
        let left = match (veth_left, netns_left) {
            (true, true) => format!("veth {veth} and namespace {netns}"),
            (true, false) => format!("veth {veth}"),
            _ => format!("namespace {netns}"),
        };
        Err(NetError::Verify {
            what: format!("removing the network of machine namespace {netns}"),
            detail: format!(
                "{left} still exists after removal ({detail}); remove it with `ip link del {veth}` / `ip netns del {netns}`"
            ),
        })
    }
}

/// Refuses names that `ip` would not take as one argument or that could leave `/run/netns`.
fn validate(m: &MachineNetwork) -> Result<(), NetError> {
    let id = m.netns.strip_prefix(NETNS_PREFIX).unwrap_or("");
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NetError::InvalidName {
            kind: "network namespace",
            name: m.netns.clone(),
            reason: "expected hangar- and 1 to 64 characters of [a-z0-9-]",
        });
    }
    validate_org(&m.org)?;
    for (kind, name) in [("veth", &m.host_veth), ("guest interface", &m.guest_ifname)] {
        if name.is_empty() || name.len() > 15 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(NetError::InvalidName {
                kind,
                name: name.clone(),
                reason: "expected 1 to 15 letters or digits",
            });
        }
    }
    Ok(())
}

fn validate_org(org: &OrgNetwork) -> Result<(), NetError> {
    if is_bridge_name(&org.bridge) && org.bridge.len() <= 15 {
        Ok(())
    } else {
        Err(NetError::InvalidName {
            kind: "bridge",
            name: org.bridge.clone(),
            reason: "expected hgbr and digits, at most 15 characters",
        })
    }
}

impl HostNet for LinuxHostNet {
    fn ensure_org(&self, org: &OrgNetwork) -> Result<(), NetError> {
        validate_org(org)?;
        let mut ensured = self.lock();
        let bridge = &org.bridge;
        if ensured.contains(bridge) && self.link_exists(bridge) {
            return Ok(());
        }
        let _host_lock = self.host_lock()?;
        if !self.link_exists(bridge) {
            let what = format!("creating bridge {bridge} (ip link add)");
            if let Err(err) = self.ip_batch(None, &bridge_create_batch(org), &what) {
                // Another process (an earlier server, a concurrent test) may have created
                // it in the meantime; then it only needs configuring.
                if !self.link_exists(bridge) {
                    return Err(err);
                }
            }
        }
        self.disable_dad(bridge)?;
        let what = format!("configuring bridge {bridge} addresses");
        self.ip_batch(None, &bridge_configure_batch(org), &what)?;
        self.apply_nft(&self.hangar_bridges()?)?;
        ensured.insert(bridge.clone());
        tracing::info!(bridge, ipv4 = %org.ipv4_subnet, ipv6 = %org.ipv6_subnet, "organization network ready");
        Ok(())
    }

    fn create_machine(&self, m: &MachineNetwork) -> Result<(), NetError> {
        validate(m)?;
        self.ensure_org(&m.org)?;
        if self.link_exists(&m.host_veth) || self.netns_exists(&m.netns) {
            tracing::info!(netns = %m.netns, "removing a leftover network of this machine first");
            self.destroy_machine(m)?;
        }
        // The addresses may have belonged to a machine destroyed moments ago: the host's
        // neighbour entries for them still name that machine's MAC address and would be
        // trusted for up to ~30 s, black-holing health checks and proxied requests.
        let flush = format!(
            "neigh flush to {} dev {bridge}\nneigh flush to {} dev {bridge}\n",
            m.ipv4,
            m.ipv6,
            bridge = m.org.bridge
        );
        if let Err(err) = self.ip_batch(None, &flush, "flushing stale neighbour entries") {
            tracing::warn!(netns = %m.netns, error = %err, "could not flush neighbour entries");
        }
        let result = self.build_machine_netns(m);
        if let Err(err) = result {
            // Leave nothing half-made behind; the original error is the one to report.
            if let Err(cleanup) = self.destroy_machine(m) {
                tracing::warn!(netns = %m.netns, error = %cleanup, "cleaning up a failed machine network");
            }
            return Err(err);
        }
        Ok(())
    }

    fn destroy_machine(&self, m: &MachineNetwork) -> Result<(), NetError> {
        validate(m)?;
        self.destroy_names(&m.host_veth, &m.netns)
    }

    fn list_machine_netns(&self) -> Result<Vec<String>, NetError> {
        let entries = match fs::read_dir(&self.netns_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(NetError::Io {
                    action: "listing",
                    path: self.netns_dir.clone(),
                    source,
                });
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter_map(|name| name.strip_prefix(NETNS_PREFIX).map(str::to_owned))
            .filter(|id| !id.is_empty())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn destroy_org(&self, org: &OrgNetwork) -> Result<(), NetError> {
        validate_org(org)?;
        let mut ensured = self.lock();
        let _host_lock = self.host_lock()?;
        let bridge = &org.bridge;
        if self.link_exists(bridge) {
            let what = format!("removing bridge {bridge}");
            let result = self.ip_batch(None, &format!("link del {bridge}\n"), &what);
            if self.link_exists(bridge) {
                result?;
            }
        }
        ensured.remove(bridge);
        let remaining: Vec<String> = self
            .hangar_bridges()?
            .into_iter()
            .filter(|b| b != bridge)
            .collect();
        self.apply_nft_removing(&remaining)
    }

    fn teardown_all(&self) -> Result<(), NetError> {
        let mut ensured = self.lock();
        let _host_lock = self.host_lock()?;
        let mut first_error = None;
        for id in self.list_machine_netns()? {
            if let Err(err) =
                self.destroy_names(&host_veth_name(&id), &format!("{NETNS_PREFIX}{id}"))
            {
                first_error.get_or_insert(err);
            }
        }
        let bridges = self.hangar_bridges()?;
        if !bridges.is_empty() {
            let batch: String = bridges.iter().map(|b| format!("link del {b}\n")).collect();
            if let Err(err) = self.run(
                &self.ip,
                &["-force", "-batch", "-"],
                &batch,
                "removing hangar bridges",
                "iproute2",
            ) && self.hangar_bridges()?.len() == bridges.len()
            {
                first_error.get_or_insert(err);
            }
        }
        ensured.clear();
        if let Err(err) = self.apply_nft_removing(&[]) {
            first_error.get_or_insert(err);
        }
        first_error.map_or(Ok(()), Err)
    }
}
