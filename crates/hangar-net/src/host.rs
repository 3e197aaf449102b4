//! The [`HostNet`] trait, through which every host effect goes, and a recording fake for
//! unit tests of its callers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::NetError;
use crate::plan::{MachineNetwork, NETNS_PREFIX, OrgNetwork};

/// Every host effect of machine networking. Implementations are shared between the
/// supervisor's tasks, so they are `Send + Sync` and take `&self`; they block (they run
/// short helper programs), so async callers should use `spawn_blocking`.
pub trait HostNet: Send + Sync {
    /// Makes sure the organization's bridge exists, is up, has its gateway addresses (with
    /// IPv6 duplicate address detection disabled so they are usable at once) and that the
    /// firewall keeps it apart from other organizations. Idempotent.
    fn ensure_org(&self, org: &OrgNetwork) -> Result<(), NetError>;

    /// Creates the machine's network namespace and veth pair (the guest end named `eth0`
    /// inside), its addresses, loopback, and default routes via the gateways. Ensures the
    /// organization first. Anything left of an earlier network of the same machine is
    /// removed first, so never call this for a machine that is running.
    fn create_machine(&self, m: &MachineNetwork) -> Result<(), NetError>;

    /// Removes the machine's veth pair and namespace. Idempotent: absent is fine.
    fn destroy_machine(&self, m: &MachineNetwork) -> Result<(), NetError>;

    /// The machine ids of the existing `hangar-*` namespaces, sorted, for reconciling
    /// orphans after a crash.
    fn list_machine_netns(&self) -> Result<Vec<String>, NetError>;

    /// Removes the organization's bridge and its firewall rule. Idempotent.
    fn destroy_org(&self, org: &OrgNetwork) -> Result<(), NetError>;

    /// Removes everything Hangar networking put on the host: machine namespaces and veths,
    /// organization bridges, and the `inet hangar` nftables table.
    fn teardown_all(&self) -> Result<(), NetError>;
}

/// A fake [`HostNet`] that records each operation as one line and keeps just enough state
/// (organizations, machines) to answer [`HostNet::list_machine_netns`] and to behave like
/// the real one on repeated calls. Snapshot [`RecordingHostNet::operations`] in tests.
#[derive(Debug, Default)]
pub struct RecordingHostNet {
    state: Mutex<RecordingState>,
}

#[derive(Debug, Default)]
struct RecordingState {
    operations: Vec<String>,
    orgs: BTreeSet<String>,
    /// Namespace name to machine id.
    machines: BTreeMap<String, String>,
    failures: BTreeMap<&'static str, String>,
}

impl RecordingHostNet {
    /// An empty host.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operations recorded so far, one line each.
    pub fn operations(&self) -> Vec<String> {
        self.lock().operations.clone()
    }

    /// The operations recorded so far, clearing the record.
    pub fn take_operations(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().operations)
    }

    /// Makes the next call of `operation` (a [`HostNet`] method name such as
    /// `"create_machine"`) fail with `message` instead of taking effect.
    pub fn fail_next(&self, operation: &'static str, message: impl Into<String>) {
        self.lock().failures.insert(operation, message.into());
    }

    /// The bridges of the organizations that currently exist.
    pub fn bridges(&self) -> Vec<String> {
        self.lock().orgs.iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, RecordingState> {
        // A panicking test thread must not hide the record from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RecordingState {
    fn record(&mut self, operation: &'static str, line: String) -> Result<(), NetError> {
        if let Some(message) = self.failures.remove(operation) {
            self.operations.push(format!("{line} -> error: {message}"));
            return Err(NetError::Command {
                what: line,
                stderr: message,
            });
        }
        self.operations.push(line);
        Ok(())
    }

    fn ensure_org(&mut self, org: &OrgNetwork) -> Result<(), NetError> {
        self.record(
            "ensure_org",
            format!(
                "ensure_org {} {}/{} {}/{}",
                org.bridge,
                org.ipv4_gateway,
                org.ipv4_subnet.prefix_len(),
                org.ipv6_gateway,
                org.ipv6_subnet.prefix_len()
            ),
        )?;
        self.orgs.insert(org.bridge.clone());
        Ok(())
    }
}

impl HostNet for RecordingHostNet {
    fn ensure_org(&self, org: &OrgNetwork) -> Result<(), NetError> {
        self.lock().ensure_org(org)
    }

    fn create_machine(&self, m: &MachineNetwork) -> Result<(), NetError> {
        let mut state = self.lock();
        // Like the real implementation: the organization is ensured first, and a leftover
        // network of the same machine is replaced.
        if !state.orgs.contains(&m.org.bridge) {
            state.ensure_org(&m.org)?;
        }
        state.record(
            "create_machine",
            format!(
                "create_machine {} veth={} bridge={} {} {}",
                m.netns, m.host_veth, m.org.bridge, m.ipv4, m.ipv6
            ),
        )?;
        let id = m
            .netns
            .strip_prefix(NETNS_PREFIX)
            .unwrap_or(&m.netns)
            .to_owned();
        state.machines.insert(m.netns.clone(), id);
        Ok(())
    }

    fn destroy_machine(&self, m: &MachineNetwork) -> Result<(), NetError> {
        let mut state = self.lock();
        let existed = state.machines.contains_key(&m.netns);
        let suffix = if existed { "" } else { " (absent)" };
        state.record(
            "destroy_machine",
            format!("destroy_machine {}{suffix}", m.netns),
        )?;
        state.machines.remove(&m.netns);
        Ok(())
    }

    fn list_machine_netns(&self) -> Result<Vec<String>, NetError> {
        let mut state = self.lock();
        state.record("list_machine_netns", "list_machine_netns".to_owned())?;
        Ok(state.machines.values().cloned().collect())
    }

    fn destroy_org(&self, org: &OrgNetwork) -> Result<(), NetError> {
        let mut state = self.lock();
        state.record("destroy_org", format!("destroy_org {}", org.bridge))?;
        state.orgs.remove(&org.bridge);
        Ok(())
    }

    fn teardown_all(&self) -> Result<(), NetError> {
        let mut state = self.lock();
        state.record("teardown_all", "teardown_all".to_owned())?;
        state.orgs.clear();
        state.machines.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NetPool, allocate_ipv4, allocate_ipv6, machine_network, org_network};

    #[test]
    fn records_a_machine_lifecycle() {
        let host = RecordingHostNet::new();
        let net: &dyn HostNet = &host;
        let org = org_network(&NetPool::default(), 4).unwrap();
        let a = machine_network(
            &org,
            "aaaaaaaaaaaaaa",
            allocate_ipv4(&org, &BTreeSet::new()).unwrap(),
            allocate_ipv6(&org, &BTreeSet::new()).unwrap(),
        );
        let b = machine_network(
            &org,
            "bbbbbbbbbbbbbb",
            "172.29.4.3".parse().unwrap(),
            "fdaa:0:4::3".parse().unwrap(),
        );
        net.create_machine(&a).unwrap();
        net.ensure_org(&org).unwrap();
        net.create_machine(&b).unwrap();
        assert_eq!(
            net.list_machine_netns().unwrap(),
            ["aaaaaaaaaaaaaa", "bbbbbbbbbbbbbb"]
        );
        net.destroy_machine(&a).unwrap();
        net.destroy_machine(&a).unwrap();
        assert_eq!(net.list_machine_netns().unwrap(), ["bbbbbbbbbbbbbb"]);
        net.destroy_org(&org).unwrap();
        net.teardown_all().unwrap();
        assert!(host.bridges().is_empty());
        insta::assert_yaml_snapshot!("recording_lifecycle", host.take_operations());
        assert!(host.operations().is_empty());
    }

    #[test]
    fn injected_failures_are_returned_once_and_recorded() {
        let host = RecordingHostNet::new();
        let org = org_network(&NetPool::default(), 9).unwrap();
        let m = machine_network(
            &org,
            "cccccccccccccc",
            "172.29.9.2".parse().unwrap(),
            "fdaa:0:9::2".parse().unwrap(),
        );
        host.fail_next("create_machine", "RTNETLINK answers: File exists");
        let err = host.create_machine(&m).expect_err("injected failure");
        assert!(
            err.to_string().contains("RTNETLINK answers: File exists"),
            "{err}"
        );
        assert!(host.list_machine_netns().unwrap().is_empty());
        host.create_machine(&m).unwrap();
        assert_eq!(host.list_machine_netns().unwrap(), ["cccccccccccccc"]);
        insta::assert_yaml_snapshot!("recording_failure", host.operations());
    }
}
