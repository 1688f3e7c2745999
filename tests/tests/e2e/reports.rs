//! The hub checks what spokes report: a real enrolled spoke certificate driven by a small
//! client speaking `shared::proto` over QUIC (a compromised spoke) forges part reports and
//! completions and claims 0 µs RTTs and huge capacity. Forged reports are refused and the
//! transfer still completes byte-identical (on the hub); a forged `done` never marks a transfer
//! whose destination is missing done; the liar holds no more transfers than the hub allows;
//! on side streams, parts no hub granted and budget questions about junk buckets are refused.

use crate::offload::{connector, setup_seeded, sha_of, transfer, Setup};
use crate::spokes::{enroll, join_token, text, wait_healthy, SpokeProc};
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use shared::proto::{
    Assignment, Heartbeat, Hello, HubMsg, PartGrant, PartReport, RttSample, SideAnswer, SideAsk,
    SpokeMsg,
};
use shared::storage::transfer::{composite_sha256, PartDone};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const MIB: u64 = 1 << 20;

/// A spoke that says whatever the test wants: hello with `slots`, heartbeats claiming 0 µs
/// to the hub and to every storage endpoint named, and the reports the test sends.
struct Forger {
    id: i64,
    assigns: mpsc::UnboundedReceiver<Assignment>,
    reports: mpsc::UnboundedSender<SpokeMsg>,
    cancels: Arc<Mutex<BTreeSet<i64>>>,
    task: tokio::task::JoinHandle<()>,
    conn: quinn::Connection,
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forger {
    async fn start(
        hub: &TestHub,
        root: &Path,
        name: &str,
        slots: u32,
        storage: &[String],
    ) -> Forger {
        let dir = root.join(name);
        let join = join_token(hub, &hub.state.config.region).await;
        let o = enroll(&join, &dir, &["--name", name]).await;
        assert!(o.status.success(), "enroll: {}", text(&o.stderr));
        let ident = spoke::config::Identity::load(&dir).expect("identity");
        let tls = shared::pki::spoke_client_config(
            &ident.hub_ca_pem,
            &ident.cert_pem,
            &ident.key_pem,
            shared::proto::ALPN,
        )
        .expect("tls");
        let (endpoint, conn) =
            spoke::control::connect(&ident.config.hubs[0].quic, tls, Duration::from_millis(200))
                .await
                .expect("connect");
        let mut stream = spoke::control::ControlStream::open(&conn)
            .await
            .expect("stream");
        let id = ident.config.spoke_id;
        stream
            .send(&SpokeMsg::Hello(Hello {
                version: shared::proto::VERSION,
                spoke_id: id,
                region: ident.config.region.clone(),
                software: "forger".into(),
                slots,
                running: Vec::new(),
                fs_roots: Vec::new(),
                url_sources: true,
            }))
            .await
            .expect("hello");
        match stream.recv().await.expect("welcome") {
            HubMsg::Welcome(_) => {}
            other => panic!("expected a welcome, got {other:?}"),
        }
        let mut rtts = vec![RttSample {
            target: format!("hub:{}", ident.config.region),
            rtt_us: 0,
        }];
        rtts.extend(storage.iter().map(|s| RttSample {
            target: format!("storage:{s}"),
            rtt_us: 0,
        }));
        let hb = Heartbeat {
            active_jobs: 0,
            free_slots: slots,
            bytes_per_sec: 10_000 * MIB,
            rtts,
            ..Default::default()
        };
        let (assign_tx, assigns) = mpsc::unbounded_channel();
        let (reports, mut report_rx) = mpsc::unbounded_channel::<SpokeMsg>();
        let cancels = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = cancels.clone();
        let side = conn.clone();
        let task = tokio::spawn(async move {
            let _endpoint = endpoint;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if stream.send(&SpokeMsg::Heartbeat(hb.clone())).await.is_err() {
                            return;
                        }
                    }
                    msg = stream.recv() => match msg {
                        Ok(HubMsg::Assign(a)) => { let _ = assign_tx.send(*a); }
                        Ok(HubMsg::Cancel { transfer_id }) => {
                            seen.lock().unwrap_or_else(|p| p.into_inner()).insert(transfer_id);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    Some(r) = report_rx.recv() => {
                        if stream.send(&r).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Forger {
            id,
            assigns,
            reports,
            cancels,
            task,
            conn: side,
        }
    }

    /// Asks the hub `ask` on a side stream, as a spoke asks for budgets or records parts.
    async fn ask(&self, ask: &SideAsk) -> SideAnswer {
        let (mut send, mut recv) = self.conn.open_bi().await.expect("side stream");
        send.write_all(&shared::proto::encode(ask).expect("frame"))
            .await
            .expect("write");
        send.finish().expect("finish");
        shared::proto::read_frame(&mut recv, shared::proto::MAX_SIDE_FRAME)
            .await
            .expect("the hub's answer")
    }

    /// The assignment of transfer `id` (the scheduler may send an earlier one twice when its
    /// tick and the API's dispatch meet).
    async fn assignment(&mut self, id: i64) -> Assignment {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let a = tokio::time::timeout_at(deadline, self.assigns.recv())
                .await
                .expect("the assignment within 30 s")
                .expect("the forger is running");
            if a.transfer_id == id {
                return a;
            }
        }
    }

    fn report(&self, msg: SpokeMsg) {
        self.reports.send(msg).expect("the forger is running");
    }

    fn cancelled(&self, id: i64) -> bool {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }
}

fn hub_yaml(extra: &str) -> String {
    format!(
        "offload:\n  part_size: {}\n  part_concurrency: 2\n  startup_grace_secs: 0\n{extra}\
         network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n",
        8 * MIB
    )
}

async fn hub(extra: &str) -> TestHub {
    TestHub::start_with(HubOptions {
        yaml: Some(hub_yaml(extra)),
        ..Default::default()
    })
    .await
    .expect("hub")
}

async fn buckets(hub: &TestHub, size: u64) -> Setup {
    setup_seeded(hub, size, 23).await
}

impl Setup {
    /// `host:port` of the S3 server, as spokes name it in their RTT reports.
    fn storage(&self) -> String {
        self.s3.endpoint().trim_start_matches("http://").to_owned()
    }

    /// Starts an asynchronous copy of `big.bin` to `dst/name`; the transfer id.
    async fn copy(&self, hub: &TestHub, name: &str) -> i64 {
        let r = hub
            .req(
                reqwest::Method::POST,
                &hub.url(&format!(
                    "/v1/accounts/{}/storage/files/{}/copy",
                    self.src, self.file_id
                )),
            )
            .header("X-Kloudless-Async", "true")
            .json(&json!({"account": self.dst, "parent_id": "root", "name": name}))
            .send()
            .await
            .expect("copy");
        assert_eq!(r.status(), 202);
        let task: Value = r.json().await.expect("json");
        task["transfer"].as_i64().expect("transfer id")
    }

    async fn dst_exists(&self, name: &str) -> bool {
        connector(&self.dst_creds)
            .await
            .exists(&shared::storage::StoragePath::parse(name).expect("path"))
            .await
            .expect("exists")
    }
}

/// Polls the transfer until it ends (at most `limit`); its final view.
async fn finished(hub: &TestHub, id: i64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let t = transfer(hub, id).await;
        if !matches!(t["state"].as_str(), Some("queued" | "running")) {
            return t;
        }
        assert!(Instant::now() < deadline, "transfer {id} never ended: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The transfer completed correctly without the forger: done by the hub, every durable part
/// the planned one and moved by the hub, the destination byte-identical.
async fn completed_without(hub: &TestHub, b: &Setup, forger: &Forger, id: i64, name: &str) {
    let t = finished(hub, id, Duration::from_secs(120)).await;
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["executor"], "hub", "{t}");
    let note = t["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("reports of spoke {} were refused", forger.id)),
        "{t}"
    );
    let parts = hub.state.db.transfer_parts(id).await.expect("parts");
    let plan = shared::storage::transfer::plan_parts(20 * MIB, 8 * MIB);
    assert_eq!(parts.len(), plan.len(), "{parts:?}");
    for ((p, by), q) in parts.iter().zip(&plan) {
        assert_eq!((p.index, p.len), (q.index, q.len), "{parts:?}");
        assert_eq!(*by, None, "part {} recorded from spoke {by:?}", p.index);
    }
    assert_eq!(sha_of(&connector(&b.dst_creds).await, name).await, b.sha);
    assert!(forger.cancelled(id), "the forger was not told to stop");
}

/// Makes a forged part report from an assignment.
type Forge = fn(&Assignment) -> PartDone;

fn planned(a: &Assignment, index: u32) -> PartDone {
    let p = a
        .parts
        .iter()
        .find(|p| p.index == index)
        .expect("planned part");
    PartDone {
        index,
        len: p.len,
        sha256: "5e".repeat(32),
        etag: "0123456789abcdef0123456789abcdef".into(),
    }
}

/// Part reports that do not match the plan (an index far outside it, a wrong length, a
/// malformed hash) are refused, never stored, and the transfer is re-planned without the
/// spoke that sent them: with no other spoke, the hub runs it and it completes byte-identical.
#[tokio::test]
async fn forged_part_reports_are_refused_and_the_transfer_completes() {
    let hub = hub("").await;
    let b = buckets(&hub, 20 * MIB).await;
    let root = tempfile::tempdir().expect("tmp");
    let mut forger = Forger::start(&hub, root.path(), "forger", 4, &[b.storage()]).await;
    wait_healthy(&hub, forger.id).await;
    let forgeries: [(&str, Forge); 4] = [
        ("an index outside the plan", |a| PartDone {
            index: u32::MAX,
            ..planned(a, 0)
        }),
        ("a wrong length", |a| PartDone {
            len: 1234,
            ..planned(a, 0)
        }),
        ("the last part's length at the first index", |a| PartDone {
            len: planned(a, 2).len,
            ..planned(a, 0)
        }),
        ("a malformed hash", |a| PartDone {
            sha256: "not-a-sha256".into(),
            ..planned(a, 1)
        }),
    ];
    for (i, (what, forge)) in forgeries.iter().enumerate() {
        let name = format!("forged-{i}.bin");
        let id = b.copy(&hub, &name).await;
        let a = forger.assignment(id).await;
        assert_eq!(a.parts.len(), 3, "{what}");
        forger.report(SpokeMsg::PartDone {
            transfer_id: id,
            part: forge(&a),
        });
        completed_without(&hub, &b, &forger, id, &name).await;
    }
}

/// A spoke that reports every part with made-up hashes and ETags, then `done` with the
/// checksum those hashes give, does not make the transfer done: the destination does not
/// exist, so the report is refused, the unconfirmed parts are forgotten and the hub copies
/// the object itself.
#[tokio::test]
async fn a_forged_done_does_not_mark_a_missing_destination_done() {
    let hub = hub("").await;
    let b = buckets(&hub, 20 * MIB).await;
    let root = tempfile::tempdir().expect("tmp");
    let mut forger = Forger::start(&hub, root.path(), "liar", 4, &[b.storage()]).await;
    wait_healthy(&hub, forger.id).await;
    let id = b.copy(&hub, "copy.bin").await;
    let a = forger.assignment(id).await;
    let parts: Vec<PartDone> = (0..3).map(|i| planned(&a, i)).collect();
    for p in &parts {
        forger.report(SpokeMsg::PartDone {
            transfer_id: id,
            part: p.clone(),
        });
    }
    forger.report(SpokeMsg::Done {
        transfer_id: id,
        size: 20 * MIB,
        checksum: composite_sha256(&parts),
    });
    // Until the hub's own copy lands, `done` never shows while the object is missing.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = transfer(&hub, id).await;
        if t["state"] == "done" {
            assert!(
                b.dst_exists("copy.bin").await,
                "done without a destination: {t}"
            );
            break;
        }
        assert!(
            matches!(t["state"].as_str(), Some("queued" | "running")),
            "{t}"
        );
        assert!(Instant::now() < deadline, "never done: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    completed_without(&hub, &b, &forger, id, "copy.bin").await;
    let t = transfer(&hub, id).await;
    assert_ne!(t["checksum"], composite_sha256(&parts), "{t}");
}

/// A spoke claiming 0 µs to everything and a million free slots does not take every
/// transfer: the hub counts on no more than `offload.max_jobs_per_spoke` of its slots, so
/// the honest spoke (and the hub) get the rest.
#[tokio::test]
async fn a_spoke_claiming_zero_rtt_and_huge_slots_does_not_win_every_assignment() {
    // The honest spoke is slowed down so that its transfers overlap the liar's.
    let hub = hub(&format!(
        "  max_jobs_per_spoke: 2\n  spoke_rate_limit: {}\n",
        4 * MIB
    ))
    .await;
    let b = buckets(&hub, 20 * MIB).await;
    let root = tempfile::tempdir().expect("tmp");
    let honest = SpokeProc::start(&hub, root.path(), "honest").await;
    wait_healthy(&hub, honest.id).await;
    let mut liar = Forger::start(&hub, root.path(), "liar", 1_000_000, &[b.storage()]).await;
    wait_healthy(&hub, liar.id).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(b.copy(&hub, &format!("c{i}.bin")).await);
    }
    // Every transfer ends up done or held by the liar (which never reports).
    let deadline = Instant::now() + Duration::from_secs(180);
    let views = loop {
        let mut views = Vec::new();
        for id in &ids {
            views.push(transfer(&hub, *id).await);
        }
        let settled = views
            .iter()
            .all(|t| t["state"] == "done" || (t["state"] == "running" && t["spoke"] == liar.id));
        if settled {
            break views;
        }
        let states: Vec<String> = views
            .iter()
            .map(|t| format!("{} {} {} {}", t["id"], t["state"], t["spoke"], t["note"]))
            .collect();
        assert!(Instant::now() < deadline, "never settled: {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut held = BTreeSet::new();
    while let Ok(a) = liar.assigns.try_recv() {
        held.insert(a.transfer_id);
    }
    assert!(
        held.len() <= 2,
        "the liar was given {} transfers: {views:?}",
        held.len()
    );
    let by_liar = views.iter().filter(|t| t["spoke"] == liar.id).count();
    assert!(by_liar <= 2, "{views:?}");
    let others = views.iter().filter(|t| t["state"] == "done").count();
    assert!(others >= 4, "{views:?}");
    let by_honest = views
        .iter()
        .filter(|t| t["executor"] == "spoke" && t["spoke"] == honest.id)
        .count();
    assert!(by_honest >= 1, "{views:?}");
}

/// A hostile spoke on side streams: a session part no hub granted (a made-up tag, or the
/// right shape for another session) is refused and not recorded; budget questions about
/// buckets of services that are not paced, or of junk names, are refused.
#[tokio::test]
async fn forged_side_questions_are_refused() {
    let hub = hub("").await;
    let root = tempfile::tempdir().expect("tmp");
    let forger = Forger::start(&hub, root.path(), "liar", 1, &[]).await;
    wait_healthy(&hub, forger.id).await;
    let acc = hub.creds.account_id;
    let r = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!("/v1/accounts/{acc}/storage/multipart")),
        )
        .json(&json!({"parent_id": "root", "name": "s.bin", "size": 10}))
        .send()
        .await
        .expect("open");
    assert_eq!(r.status(), 201);
    let session = r.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let forged = |tag: &str, session: i64| {
        SideAsk::Part(PartReport {
            grant_id: "made-up".into(),
            account: acc,
            part: PartGrant {
                session,
                number: 1,
                upload_id: None,
                staging: Some(".switchyard-partial/0123456789abcdef".into()),
                tag: tag.into(),
            },
            size: 10,
            etag: None,
        })
    };
    for ask in [forged(&"00".repeat(32), session), forged("zz", session)] {
        match forger.ask(&ask).await {
            SideAnswer::Refused { status, .. } => assert_eq!(status, Some(403)),
            other => panic!("a forged part was answered {other:?}"),
        }
    }
    let v: Value = hub
        .req(
            reqwest::Method::GET,
            &hub.url(&format!("/v1/accounts/{acc}/storage/multipart/{session}")),
        )
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(v["parts_received"], json!([]), "nothing recorded: {v}");
    let take = |service: &str, key: String| SideAsk::Take {
        service: service.into(),
        key,
        max_wait_ms: 10,
    };
    for ask in [
        take("fs", "fs:/etc".into()),
        take("s3", "webdav:h:80".into()),
        take("s3", format!("s3:{}", "x".repeat(600))),
        take("s3", "s3:a b".into()),
        SideAsk::Cool {
            key: "nope:x".into(),
            ms: 1,
        },
    ] {
        assert!(
            matches!(forger.ask(&ask).await, SideAnswer::Refused { .. }),
            "{ask:?} was answered"
        );
    }
    // A well-formed question is answered.
    assert!(matches!(
        forger.ask(&take("s3", "s3:h:443/b".into())).await,
        SideAnswer::Take { .. }
    ));
}
