//! Steering in the multi-region lab: three hubs (us-east, eu-west, ap-south), each a real
//! `hub serve` process in its region's namespace with its DNS server, sharing one PostgreSQL;
//! clients near each region; RTTs 80 / 120 / 150 ms between regions through the WAN emulator.
//! Clients get their nearest hub once RTT samples exist; a killed hub leaves the answers within
//! three probe intervals (plus the TTL for a resolver's cache) and returns after recovery; when
//! every hub looks down to the others, the DNS fails open.

use e2e::lab::{Lab, LabSpec, ROOT};
use e2e::netns::Proc;
use e2e::servers::Postgres;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const HUB: &str = env!("CARGO_BIN_EXE_e2e-hub");
const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const CLIENTS: [(&str, &str); 3] = [
    ("client-us", "us-east"),
    ("client-eu", "eu-west"),
    ("client-ap", "ap-south"),
];
/// Probe interval of the lab's hubs (the default is 5 s; the bound scales with it).
const INTERVAL: u64 = 2;
const TTL: u64 = 30;

struct Hubs {
    dir: PathBuf,
    pg_url: String,
    procs: Vec<(String, Proc)>,
}

fn write_config(dir: &Path, region: &str, addr: Ipv4Addr, pg_url: &str) -> PathBuf {
    let data = dir.join(region);
    std::fs::create_dir_all(&data).expect("data dir");
    let yaml = format!(
        "listen: \"{addr}:8080\"\npublic_url: \"http://{addr}:8080\"\nregion: {region}\n\
         data_dir: \"{data}\"\ndatabase:\n  url: \"{pg_url}\"\n  max_connections: 4\n\
         secrets:\n  master_key_file: \"{key}\"\nnetwork:\n  quic_listen: null\n\
         storage:\n  allow_private_endpoints: true\n\
         dns:\n  listen: \"{addr}:53\"\n  zone: lab.test\n  ttl_secs: {TTL}\n  \
         probe_interval_secs: {INTERVAL}\n  probe_failures: 3\n",
        data = data.display(),
        key = dir.join("master.key").display(),
    );
    let path = dir.join(format!("{region}.yaml"));
    std::fs::write(&path, yaml).expect("config");
    path
}

impl Hubs {
    fn start(lab: &Lab, region: &str, dir: &Path, pg_url: &str) -> Proc {
        let cfg = write_config(dir, region, lab.addr(region), pg_url);
        let mut cmd = lab.command(region, HUB);
        cmd.arg("--config")
            .arg(&cfg)
            .arg("serve")
            .env("SWITCHYARD_LOG", "info");
        lab.spawn(region, cmd, &dir.join(format!("{region}.log")))
            .expect("hub process")
    }

    fn restart(&mut self, lab: &Lab, region: &str) {
        let p = Self::start(lab, region, &self.dir, &self.pg_url);
        self.procs.retain(|(r, _)| r != region);
        self.procs.push((region.to_owned(), p));
    }

    fn kill(&mut self, region: &str) {
        if let Some((_, p)) = self.procs.iter_mut().find(|(r, _)| r == region) {
            p.signal("KILL").expect("kill");
            let _ = p.wait(Duration::from_secs(5));
        }
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|(r, p)| {
                let out = p.output();
                let tail: Vec<&str> = out.lines().rev().take(15).collect();
                format!(
                    "--- {r}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `curl` from the root namespace: the hub answers `/readyz`.
fn ready(addr: Ipv4Addr) -> bool {
    Command::new("curl")
        .args(["-sf", "-m", "2", &format!("http://{addr}:8080/readyz")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Meta token from the hub command line (`meta-token create`).
fn meta_token(config: &Path) -> String {
    let o = Command::new(HUB)
        .arg("--config")
        .arg(config)
        .args(["meta-token", "create", "--name", "lab"])
        .output()
        .expect("hub meta-token create");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("meta token: "))
        .expect("a meta token in the output")
        .trim()
        .to_owned()
}

/// `GET /v1/network/steering?client=` on the hub at `hub`, from the root namespace.
fn explain(hub: Ipv4Addr, meta: &str, client: Ipv4Addr) -> Option<serde_json::Value> {
    let o = Command::new("curl")
        .args([
            "-sf",
            "-m",
            "2",
            "-H",
            &format!("Authorization: Bearer {meta}"),
        ])
        .arg(format!(
            "http://{hub}:8080/v1/network/steering?client={client}"
        ))
        .output()
        .ok()?;
    serde_json::from_slice(&o.stdout).ok()
}

/// The A records `client` is given for `api.lab.test` by the DNS server of `server`'s hub.
fn ask(lab: &Lab, client: &str, server: Ipv4Addr) -> Vec<IpAddr> {
    let o = lab
        .command(client, "dig")
        .args([&format!("@{server}"), "+short", "+time=2", "+tries=1"])
        .args(["api.lab.test", "A"])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Polls `cond` every 250 ms for at most `limit`; the time it took, or a panic naming `what`.
fn within(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn clients_get_their_nearest_hub_and_failures_move_them() {
    let lab = Lab::build({
        let mut spec = LabSpec::new();
        for r in REGIONS {
            spec = spec.region(r);
        }
        for (c, near) in CLIENTS {
            spec = spec.client(c, near);
        }
        spec.rtt("us-east", "eu-west", 80.0)
            .rtt("eu-west", "ap-south", 120.0)
            .rtt("us-east", "ap-south", 150.0)
    })
    .expect("lab");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let root_ip = IpAddr::V4(lab.addr(ROOT));
    let pg = rt
        .block_on(Postgres::start_on(root_ip, &lab.block().to_string()))
        .expect("postgres");
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("master.key");
    let secret: [u8; 32] = rand::random();
    use base64::Engine as _;
    std::fs::write(
        &key,
        base64::engine::general_purpose::STANDARD.encode(secret),
    )
    .expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let mut hubs = Hubs {
        dir: dir.path().to_owned(),
        pg_url: pg.url_at(root_ip),
        procs: Vec::new(),
    };
    // The first hub migrates the database; the others start once it is ready.
    for r in REGIONS {
        let p = Hubs::start(&lab, r, &hubs.dir, &hubs.pg_url);
        hubs.procs.push((r.to_owned(), p));
        within(
            Duration::from_secs(60),
            &format!("{r} ready"),
            || ready(lab.addr(r)),
            || hubs.logs(),
        );
    }
    let addr = |r: &str| IpAddr::V4(lab.addr(r));

    // RTT samples: every client talks to every hub a few times (each accepted connection is a
    // handshake RTT for that hub's estimate of the client's network).
    for (c, _) in CLIENTS {
        for r in REGIONS {
            for _ in 0..3 {
                let ok = lab
                    .command(c, "curl")
                    .args([
                        "-sf",
                        "-m",
                        "5",
                        &format!("http://{}:8080/readyz", lab.addr(r)),
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success());
                assert!(ok, "{c} cannot reach {r}");
            }
        }
    }
    // Every hub's DNS gives every client its own region's hub.
    within(
        Duration::from_secs(20),
        "every client steered to its nearest hub by every DNS server",
        || {
            CLIENTS.iter().all(|(c, near)| {
                REGIONS
                    .iter()
                    .all(|r| ask(&lab, c, lab.addr(r)) == [addr(near)])
            })
        },
        || hubs.logs(),
    );

    // Kill eu-west: its clients move to the next nearest (us-east, 80 ms; ap-south is 120).
    hubs.kill("eu-west");
    let others = [lab.addr("us-east"), lab.addr("ap-south")];
    let took = within(
        Duration::from_secs(3 * INTERVAL + 10),
        "client-eu moved off the killed hub",
        || {
            others
                .iter()
                .all(|s| ask(&lab, "client-eu", *s) == [addr("us-east")])
        },
        || hubs.logs(),
    );
    // Three failed probes (both other hubs must agree; the first may come up to an interval
    // after the kill), then one snapshot reload; a resolver that cached the old answer keeps it
    // at most TTL more.
    assert!(
        took <= Duration::from_secs(4 * INTERVAL + 4),
        "the killed hub left the answers after {took:?}"
    );
    eprintln!(
        "killed hub removed from answers after {took:?} (bound with resolver caches: \
         {} s; defaults 3 × 5 + 30 = 45 s)",
        3 * INTERVAL + TTL
    );
    // The other clients are unaffected.
    assert_eq!(
        ask(&lab, "client-us", lab.addr("us-east")),
        [addr("us-east")]
    );
    assert_eq!(
        ask(&lab, "client-ap", lab.addr("ap-south")),
        [addr("ap-south")]
    );

    // Recovery: eu-west comes back and gets its clients back.
    hubs.restart(&lab, "eu-west");
    within(
        Duration::from_secs(60),
        "eu-west ready again",
        || ready(lab.addr("eu-west")),
        || hubs.logs(),
    );
    within(
        Duration::from_secs(3 * INTERVAL + 15),
        "client-eu back on eu-west",
        || ask(&lab, "client-eu", lab.addr("us-east")) == [addr("eu-west")],
        || hubs.logs(),
    );

    // Every hub cut off from the others (clients and the database still reach them): each
    // looks down to the two others, so all are down, and the DNS answers as if all were healthy.
    for (i, a) in REGIONS.iter().enumerate() {
        for b in &REGIONS[i + 1..] {
            lab.set_loss(a, b, 1.0);
        }
    }
    let db = rt.block_on(hub::db::Db::connect(&pg.url(), 2)).expect("db");
    within(
        Duration::from_secs(3 * INTERVAL + 15),
        "every hub voted down by two others",
        || {
            let rows = rt
                .block_on(db.health_since(hub::state::now_ms() - 10_000))
                .unwrap_or_default();
            REGIONS.iter().all(|r| {
                let target = format!("http://{}:8080", lab.addr(r));
                rows.iter()
                    .filter(|h| h.target == target && !h.healthy)
                    .count()
                    >= 2
            })
        },
        || hubs.logs(),
    );
    // Once every hub's snapshot says so (the explain API), the DNS fails open: nearest of all.
    let meta = meta_token(&hubs.dir.join("us-east.yaml"));
    within(
        Duration::from_secs(10),
        "every hub's steering failing open",
        || {
            REGIONS.iter().all(|r| {
                explain(lab.addr(r), &meta, lab.addr("client-eu"))
                    .is_some_and(|v| v["fail_open"] == true)
            })
        },
        || hubs.logs(),
    );
    for (c, near) in CLIENTS {
        assert_eq!(
            ask(&lab, c, lab.addr(near)),
            [addr(near)],
            "{c} during the partition\n{}",
            hubs.logs()
        );
    }
    drop(hubs);
    drop(pg);
    drop(lab);
}
