//! Measures what machine networking adds to a machine start and destroy on this host:
//! `create_machine` and `destroy_machine` of `LinuxHostNet`, repeated, with median and
//! min–max. Needs root. Uses organization 249 and throw-away machine ids.
//!
//! `cargo run --release -p hangar-net --example netns_bench -- [iterations]`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use hangar_net::{
    HostNet, LinuxHostNet, NetPool, allocate_ipv4, allocate_ipv6, machine_network, org_network,
};

fn summary(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<24} median {:6.2} ms   min {:6.2} ms   max {:6.2} ms   (n={})",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
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
        .unwrap_or(50);
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

    let (mut create, mut destroy, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut result = Ok(());
    for i in 0..iterations {
        let id = format!("fd{:08x}{:04x}", std::process::id(), i & 0xffff);
        let m = machine_network(
            &org,
            &id,
            allocate_ipv4(&org, &BTreeSet::new())?,
            allocate_ipv6(&org, &BTreeSet::new())?,
        );
        let t0 = Instant::now();
        if let Err(err) = net.create_machine(&m).context("create_machine") {
            result = Err(err);
            let _ = net.destroy_machine(&m);
            break;
        }
        let t1 = Instant::now();
        if let Err(err) = net.destroy_machine(&m).context("destroy_machine") {
            result = Err(err);
            break;
        }
        let t2 = Instant::now();
        create.push(t1 - t0);
        destroy.push(t2 - t1);
        total.push(t2 - t0);
    }
    net.destroy_org(&org)?;
    result?;
    println!(
        "ensure_org (new bridge + nft)  {:6.2} ms",
        first_ensure.as_secs_f64() * 1000.0
    );
    println!(
        "ensure_org (already done)      {:6.3} ms",
        cached_ensure.as_secs_f64() * 1000.0
    );
    summary("create_machine", &mut create);
    summary("destroy_machine", &mut destroy);
    summary("create + destroy", &mut total);
    Ok(())
}
