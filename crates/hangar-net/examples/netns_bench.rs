//! Measures what machine networking adds to a machine start and destroy on this host:
//! `create_machine` and `destroy_machine` of `LinuxHostNet`, alternating with a peer that
//! does the same work the straightforward way (one `ip` process per command, and
//! `ip netns exec ... sysctl` for the IPv6 settings), so both see the same load. Prints the
//! median and min–max of each and their ratio. Needs root. Uses organization 249 and
//! throw-away machine ids.
//!
//! `cargo run --release -p hangar-net --example netns_bench -- [iterations]`

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use hangar_net::commands::{machine_host_batch, machine_netns_batch};
use hangar_net::{
    HostNet, LinuxHostNet, MachineNetwork, NetPool, allocate_ipv4, allocate_ipv6, machine_network,
    org_network,
};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn summary(name: &str, samples: &mut [Duration]) -> Duration {
    let mid = median(samples);
    println!(
        "{name:<34} median {:6.2} ms   min {:6.2} ms   max {:6.2} ms   (n={})",
        ms(mid),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
    mid
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The peer: the same host changes, one process per command.
fn naive_create(m: &MachineNetwork) -> Result<()> {
    let mut lines = machine_host_batch(m)
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    lines.truncate(2);
    for line in &lines {
        ip(&line.split_whitespace().collect::<Vec<_>>())?;
    }
    ip(&[
        "netns",
        "exec",
        &m.netns,
        "sysctl",
        "-q",
        "-w",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.eth0.accept_dad=0",
    ])?;
    for line in machine_netns_batch(m).lines() {
        let mut args = vec!["-n", m.netns.as_str()];
        args.extend(line.split_whitespace());
        ip(&args)?;
    }
    Ok(())
}

fn naive_destroy(m: &MachineNetwork) -> Result<()> {
    ip(&["link", "del", &m.host_veth])?;
    ip(&["netns", "del", &m.netns])
}

fn main() -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "netns_bench needs root"
    );
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    ensure!(
        (1..=10_000).contains(&iterations),
        "iterations must be 1..=10000"
    );
    let net = LinuxHostNet::new();
    net.check_tools()?;
    let org = org_network(&NetPool::default(), 249)?;

    let started = Instant::now();
    net.ensure_org(&org)?;
    let first_ensure = started.elapsed();
    let started = Instant::now();
    net.ensure_org(&org)?;
    let cached_ensure = started.elapsed();

    let mut ours = [Vec::new(), Vec::new(), Vec::new()];
    let mut peer = [Vec::new(), Vec::new(), Vec::new()];
    let mut result = Ok(());
    for i in 0..iterations {
        let m = machine_network(
            &org,
            &format!("fd{:08x}{:04x}", std::process::id(), i & 0xffff),
            allocate_ipv4(&org, &BTreeSet::new())?,
            allocate_ipv6(&org, &BTreeSet::new())?,
        );
        let run = |samples: &mut [Vec<Duration>; 3],
                   create: &dyn Fn(&MachineNetwork) -> Result<()>,
                   destroy: &dyn Fn(&MachineNetwork) -> Result<()>|
         -> Result<()> {
            let t0 = Instant::now();
            let created = create(&m);
            let t1 = Instant::now();
            let destroyed = destroy(&m);
            let t2 = Instant::now();
            created?;
            destroyed?;
            samples[0].push(t1 - t0);
            samples[1].push(t2 - t1);
            samples[2].push(t2 - t0);
            Ok(())
        };
        // Alternate which goes first, so neither always runs right after the other.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for hangar in order {
            let outcome = if hangar {
                run(&mut ours, &|m| Ok(net.create_machine(m)?), &|m| {
                    Ok(net.destroy_machine(m)?)
                })
            } else {
                run(&mut peer, &naive_create, &naive_destroy)
            };
            if let Err(err) = outcome {
                let _ = net.destroy_machine(&m);
                result = Err(err);
                break;
            }
        }
        if result.is_err() {
            break;
        }
    }
    net.destroy_org(&org)?;
    result?;
    println!(
        "ensure_org, new bridge + nftables  {:6.2} ms",
        ms(first_ensure)
    );
    println!(
        "ensure_org, already done           {:6.3} ms",
        ms(cached_ensure)
    );
    let [c, d, t] = &mut ours;
    let ours_create = summary("hangar create_machine", c);
    summary("hangar destroy_machine", d);
    let ours_total = summary("hangar create + destroy", t);
    let [c, d, t] = &mut peer;
    let peer_create = summary("peer (ip per command) create", c);
    summary("peer (ip per command) destroy", d);
    let peer_total = summary("peer (ip per command) total", t);
    println!(
        "ratio hangar/peer: create {:.2}, create + destroy {:.2}",
        ours_create.as_secs_f64() / peer_create.as_secs_f64(),
        ours_total.as_secs_f64() / peer_total.as_secs_f64()
    );
    Ok(())
}
