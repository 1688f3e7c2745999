//! `terraform/lab` applied for real on this host (root): regions as namespaces joined by the
//! WAN emulator, tunnel gateways, PostgreSQL primary and replicas streaming over the tunnel,
//! hubs with steering DNS, spokes, S3 servers, clients. Checked from the clients' namespaces,
//! then destroyed, and nothing may be left.

use crate::offload::{connector, sha_of, write_object};
use e2e::terraform_lab::{Bins, DeployedLab, LabHub, LabOptions};
use e2e::HubApi as _;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn bins() -> Bins {
    Bins {
        hub: env!("CARGO_BIN_EXE_e2e-hub").into(),
        spoke: env!("CARGO_BIN_EXE_e2e-spoke").into(),
        tunnel: env!("CARGO_BIN_EXE_e2e-tunnel").into(),
        linkemu: env!("CARGO_BIN_EXE_linkemu").into(),
    }
}

/// `dig +short @server name` from inside `ns`: the A records answered.
fn dig(lab: &DeployedLab, ns: &str, server: &str, name: &str) -> Vec<String> {
    let out = e2e::netns::run(
        lab.command_in(ns, "dig")
            .args(["+short", "+time=2", "+tries=3"])
            .arg(format!("@{server}"))
            .arg(name),
    )
    .expect("dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn s3_creds(lab: &DeployedLab, region: &str) -> Value {
    let s3 = &lab.outputs.s3_endpoints[region];
    json!({"bucket": s3.bucket, "endpoint": s3.endpoint, "region": "us-east-1",
           "access_key_id": "lab", "secret_access_key": "lab-secret"})
}

fn region_of(lab: &DeployedLab, addr: &str) -> Option<String> {
    lab.outputs
        .dns_servers
        .iter()
        .find(|(_, a)| a.as_str() == addr)
        .map(|(r, _)| r.clone())
}

#[test]
fn the_lab_deploys_every_region_on_one_host_and_destroy_leaves_nothing() {
    let bins = bins();
    let mut lab = DeployedLab::apply(&bins, &LabOptions::default()).expect("terraform apply");
    eprintln!("lab applied in {:.1} s", lab.apply_time.as_secs_f64());
    let regions: Vec<String> = lab.outputs.hub_urls.keys().cloned().collect();
    assert_eq!(regions.len(), 3);
    let primary = lab.outputs.primary_region.clone();
    let zone_api = lab.outputs.api_name.clone();

    // Steering: every hub's DNS answers each client with the hub of the client's region.
    for client in &regions {
        for (server_region, server) in &lab.outputs.dns_servers {
            let answer = dig(&lab, lab.client_ns(client), server, &zone_api);
            assert_eq!(
                answer,
                vec![lab.outputs.dns_servers[client].clone()],
                "client near {client} asking the {server_region} hub"
            );
        }
    }

    let out = lab
        .hub_cli(&bins, &primary, &["apps", "create", "--name", "lab"])
        .expect("apps create");
    let api_key = out
        .lines()
        .find_map(|l| l.strip_prefix("api key: "))
        .expect("api key")
        .trim()
        .to_owned();
    let meta = lab.meta_token().expect("meta token");

    // From every region's client, through the DNS name: connect the region's S3, upload,
    // download; a write made in a replica region is readable there at once.
    let mut accounts = std::collections::BTreeMap::new();
    for region in &regions {
        let addr = dig(
            &lab,
            lab.client_ns(region),
            &lab.outputs.dns_servers[&primary],
            &zone_api,
        );
        assert_eq!(region_of(&lab, &addr[0]).as_deref(), Some(region.as_str()));
        let ip: IpAddr = addr[0].parse().expect("ip");
        let (zone_api, api_key, meta, creds) = (
            zone_api.clone(),
            api_key.clone(),
            meta.clone(),
            s3_creds(&lab, region),
        );
        let region_ = region.clone();
        let account = lab
            .block_on_in(lab.client_ns(region), move || async move {
                let hub = LabHub::new(
                    &format!("http://{zone_api}:8080"),
                    Some((&zone_api, SocketAddr::new(ip, 8080))),
                    &api_key,
                    &meta,
                )?;
                let replica_reads = |m: &str| e2e::regions_lab::db_calls(m, "replica", "request");
                let before = hub
                    .client()
                    .get(hub.url("/metrics"))
                    .send()
                    .await?
                    .text()
                    .await?;
                let acc = hub.connect("s3", creds).await?;
                let id = acc["id"].as_i64().expect("id");
                // Read-your-writes in this region, at once.
                let r = hub
                    .req(
                        reqwest::Method::GET,
                        &hub.url(&format!("/v1/accounts/{id}")),
                    )
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "reading the new account: {}", r.status());
                let data = e2e::pattern(MIB as usize + 4321, 7);
                let r = hub
                    .req(
                        reqwest::Method::POST,
                        &hub.url(&format!("/v1/accounts/{id}/storage/files")),
                    )
                    .header(
                        "X-Kloudless-Metadata",
                        json!({"name": format!("hello-{region_}.bin"), "parent_id": "root"})
                            .to_string(),
                    )
                    .body(data.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    r.status() == 201,
                    "upload: {} {}",
                    r.status(),
                    r.text().await?
                );
                let file: Value = r.json().await?;
                let fid = file["id"].as_str().expect("file id");
                let back = hub
                    .req(
                        reqwest::Method::GET,
                        &hub.url(&format!("/v1/accounts/{id}/storage/files/{fid}/contents")),
                    )
                    .send()
                    .await?
                    .bytes()
                    .await?;
                anyhow::ensure!(back.as_ref() == data.as_slice(), "downloaded bytes differ");
                let after = hub
                    .client()
                    .get(hub.url("/metrics"))
                    .send()
                    .await?
                    .text()
                    .await?;
                Ok((id, replica_reads(&before), replica_reads(&after)))
            })
            .unwrap_or_else(|e| panic!("client near {region}: {e:#}"));
        if *region != primary {
            assert!(
                account.2 > account.1,
                "the {region} hub served reads from its replica ({} -> {})",
                account.1,
                account.2
            );
        }
        accounts.insert(region.clone(), account.0);
    }

    // Replication crosses the tunnel: the primary streams to each replica's private address,
    // which only the tunnel reaches, and the gateways' counters move.
    let tunnel_rx = |region: &str| -> u64 {
        let conf = lab.state_dir().join(region).join("tunnel/tunnel.yaml");
        let out = e2e::netns::run(
            lab.command_in(lab.region_ns(region), &bins.tunnel)
                .args(["status", "--json", "--config"])
                .arg(conf),
        )
        .expect("tunnel status");
        let st: Value = serde_json::from_slice(&out.stdout).expect("status json");
        st["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .filter(|p| p["name"] == primary.as_str())
            .map(|p| p["rx_bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let replicas: Vec<&String> = regions.iter().filter(|r| **r != primary).collect();
    let rx_before: Vec<u64> = replicas.iter().map(|r| tunnel_rx(r)).collect();
    let psql = |sql: &str| -> String {
        let sock = lab.state_dir().join(&primary).join("postgres/sock");
        let out = e2e::netns::run(
            lab.command_in(lab.region_ns(&primary), "setpriv")
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--clear-groups",
                    "--",
                ])
                .arg(e2e::terraform_lab::pg_tool("psql"))
                .arg("-h")
                .arg(sock)
                .args(["-U", "switchyard", "-d", "switchyard", "-At", "-c", sql]),
        )
        .expect("psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Some writes on the primary for the replicas to stream.
    psql("CREATE TABLE lab_probe AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    let streaming = psql("SELECT client_addr || ' ' || state FROM pg_stat_replication ORDER BY 1");
    assert_eq!(streaming.lines().count(), replicas.len(), "{streaming}");
    for line in streaming.lines() {
        assert!(
            line.starts_with("172.29.") && line.ends_with(" streaming"),
            "{streaming}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rx_after: Vec<u64> = replicas.iter().map(|r| tunnel_rx(r)).collect();
        if rx_after
            .iter()
            .zip(&rx_before)
            .all(|(a, b)| a > &(b + 500_000))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replication did not cross the tunnels: {rx_before:?} -> {rx_after:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = psql("DROP TABLE lab_probe");

    // A copy between the S3 servers of the two farthest regions runs on spokes: the spoke near
    // the destination writes, the one near the source relays.
    let (src_region, dst_region) = (regions[2].clone(), regions[1].clone());
    let (src_creds, dst_creds) = (s3_creds(&lab, &src_region), s3_creds(&lab, &dst_region));
    let (api_key_, meta_) = (api_key.clone(), meta.clone());
    let base = lab.outputs.hub_urls[&dst_region].clone();
    let t = lab
        .block_on_in(lab.client_ns(&dst_region), move || async move {
            let size = 24 * MIB + 777;
            let sha = write_object(&connector(&src_creds).await, "far.bin", size, 99).await;
            let hub = LabHub::new(&base, None, &api_key_, &meta_)?;
            let src = hub.connect("s3", src_creds).await?["id"]
                .as_i64()
                .expect("id");
            let dst = hub.connect("s3", dst_creds.clone()).await?["id"]
                .as_i64()
                .expect("id");
            let list: Value = hub
                .req(
                    reqwest::Method::GET,
                    &hub.url(&format!("/v1/accounts/{src}/storage/folders/root/contents")),
                )
                .send()
                .await?
                .json()
                .await?;
            let fid = list["objects"][0]["id"].as_str().expect("file").to_owned();
            let r = hub
                .req(
                    reqwest::Method::POST,
                    &hub.url(&format!("/v1/accounts/{src}/storage/files/{fid}/copy")),
                )
                .header("X-Kloudless-Async", "true")
                .json(&json!({"account": dst, "parent_id": "root", "name": "near.bin"}))
                .send()
                .await?;
            anyhow::ensure!(
                r.status() == 202,
                "copy: {} {}",
                r.status(),
                r.text().await?
            );
            let task: Value = r.json().await?;
            let id = task["transfer"].as_i64().expect("transfer id");
            let deadline = Instant::now() + Duration::from_secs(180);
            let t = loop {
                let t: Value = hub
                    .req(
                        reqwest::Method::GET,
                        &hub.url(&format!("/v1/transfers/{id}")),
                    )
                    .send()
                    .await?
                    .json()
                    .await?;
                if t["state"] == "done" || t["state"] == "failed" {
                    break t;
                }
                anyhow::ensure!(Instant::now() < deadline, "transfer still running: {t}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let spokes: Value = hub
                .client()
                .get(hub.url("/v1/network/spokes"))
                .header("Authorization", hub.meta())
                .send()
                .await?
                .json()
                .await?;
            anyhow::ensure!(
                sha_of(&connector(&dst_creds).await, "near.bin").await == sha,
                "the copy differs"
            );
            Ok((t, spokes))
        })
        .expect("copy across regions");
    let (t, spokes) = t;
    let spoke_of = |region: &str| -> i64 {
        spokes["objects"]
            .as_array()
            .expect("spokes")
            .iter()
            .find(|s| s["region"] == region)
            .and_then(|s| s["id"].as_i64())
            .unwrap_or_else(|| panic!("no spoke in {region}: {spokes}"))
    };
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], spoke_of(&dst_region), "{t}");
    assert!(
        t["note"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("relayed by spoke {}", spoke_of(&src_region))),
        "{t}"
    );

    // Destroy: nothing of the lab may remain.
    let pids = lab.pids();
    assert!(pids.len() >= 14, "{pids:?}");
    let took = lab.destroy().expect("terraform destroy");
    eprintln!("lab destroyed in {:.1} s", took.as_secs_f64());
    let left = lab.leftovers(&pids);
    assert!(left.is_empty(), "destroy left: {left:#?}");
}

/// The lab's plan-time checks (`terraform/lab/tests/plan.tftest.hcl`): topology and refused
/// inputs, offline, nothing created.
#[test]
fn the_lab_plan_builds_the_topology_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let module = dir.path().join("lab");
    e2e::terraform_lab::copy_tree(&e2e::terraform_lab::module_dir(), &module).expect("copy");
    let rc = dir.path().join("terraformrc");
    std::fs::write(&rc, "").expect("rc");
    for args in [&["init", "-no-color"][..], &["test", "-no-color"][..]] {
        let out = e2e::terraform_lab::terraform(&module, &rc)
            .args(args)
            .output()
            .expect("terraform");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "terraform {args:?}:\n{text}");
        if args[0] == "test" {
            assert!(text.contains("8 passed, 0 failed"), "{text}");
        }
    }
}

/// What if the operator interrupts `terraform apply` half-way (Ctrl-C while the hubs start)?
/// `terraform destroy` must still remove everything: processes, namespaces, the state dir.
#[test]
fn an_apply_interrupted_half_way_is_destroyed_without_a_trace() {
    let bins = bins();
    let opts = LabOptions {
        regions: vec!["us-east".into(), "eu-west".into()],
        spokes_per_region: 1,
        vars: vec![r#"rtt_ms={"us-east,eu-west"=40}"#.into()],
    };
    let mut lab = DeployedLab::prepare(&bins, &opts).expect("prepare");
    let mut apply = lab.spawn_apply().expect("apply");
    let run = lab.state_dir().join("run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let hub_starting = || {
        std::fs::read_dir(&run).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("hub-"))
        })
    };
    while !hub_starting() {
        assert!(
            apply.try_wait().expect("wait").is_none(),
            "apply ended before any hub started"
        );
        assert!(Instant::now() < deadline, "no hub started within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pids = lab.pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(apply.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = apply.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "apply ignored SIGINT for 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "an interrupted apply reports failure");
    // Daemons that started between the snapshot and the interrupt count too.
    for p in lab.pids() {
        if !pids.contains(&p) {
            pids.push(p);
        }
    }
    assert!(pids.len() >= 6, "{pids:?}");
    lab.destroy()
        .expect("terraform destroy after the interrupted apply");
    let left = lab.leftovers(&pids);
    assert!(left.is_empty(), "destroy left: {left:#?}");
}
