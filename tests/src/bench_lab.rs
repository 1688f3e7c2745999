//! `bench lab`: how long `terraform apply` of `terraform/lab` takes from nothing (three
//! regions, one spoke each: namespaces, WAN emulator, tunnels, primary + two replicas over the
//! tunnel, hubs, spokes, S3 servers) and how long `terraform destroy` takes, over several
//! rounds; medians against the bounds (apply ≤ 90 s, destroy ≤ 30 s).
#![allow(clippy::print_stdout)]

use crate::terraform_lab::{Bins, DeployedLab, LabOptions};
use anyhow::Result;
use std::time::Duration;

const APPLY_BOUND: Duration = Duration::from_secs(90);
const DESTROY_BOUND: Duration = Duration::from_secs(30);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `rounds` apply + destroy cycles with the binaries in `bins`.
pub fn run(bins: &Bins, rounds: usize) -> Result<()> {
    let (mut applies, mut destroys) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        let mut lab = DeployedLab::apply(bins, &LabOptions::default())?;
        let pids = lab.pids();
        let destroy = lab.destroy()?;
        let left = lab.leftovers(&pids);
        anyhow::ensure!(left.is_empty(), "destroy left: {left:?}");
        println!(
            "round {round}: apply {:.1} s, destroy {:.1} s ({} daemons)",
            lab.apply_time.as_secs_f64(),
            destroy.as_secs_f64(),
            pids.len()
        );
        applies.push(lab.apply_time);
        destroys.push(destroy);
    }
    let (a, d) = (median(applies), median(destroys));
    println!(
        "median apply {:.1} s (bound {} s: {}), median destroy {:.1} s (bound {} s: {})",
        a.as_secs_f64(),
        APPLY_BOUND.as_secs(),
        if a <= APPLY_BOUND { "met" } else { "MISSED" },
        d.as_secs_f64(),
        DESTROY_BOUND.as_secs(),
        if d <= DESTROY_BOUND { "met" } else { "MISSED" },
    );
    Ok(())
}
