//! Many hubs sharing transfers through leases. On the database (SQLite and PostgreSQL): a lease
//! that expired is taken over exactly once however many hubs try at once, and every write of
//! the holder that lost it changes nothing. With two real `hub` processes on one PostgreSQL,
//! two spokes connected to both and S3 on moto: the hub holding a running 256 MiB transfer is
//! SIGKILLed and the other completes it from the durable parts; the holder is SIGSTOPped past
//! its lease, the other takes over, and after SIGCONT the stale hub neither dispatches nor
//! completes the transfer. With two in-process hubs (to take a lease over at a chosen moment):
//! a spoke shared by both cancels only the run of the hub that lost the transfer, and a stale
//! holder running the transfer itself records no part after the takeover.

use crate::hubs::HubProc;
use crate::offload::{connector, setup_seeded, sha_of, start_copy, Setup};
use crate::spokes::{enroll, enrolled_id, join_token, wait_healthy, SpokeProc};
use e2e::servers::Postgres;
use hub::db::{Db, Lease, NewTransfer, TransferRecord};
use shared::storage::transfer::PartDone;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// `transfers.lease_ms` of the test hubs: above the spokes' 5 s QUIC idle timeout.
const LEASE: Duration = Duration::from_millis(6000);
/// 256 MiB in parts of 8 MiB.
const PARTS: usize = 32;

// ---- the database layer, on both engines ----

fn part(index: u32) -> PartDone {
    PartDone {
        index,
        len: 8 << 20,
        sha256: "ab".repeat(32),
        etag: "0123456789abcdef0123456789abcdef".into(),
    }
}

async fn row(db: &Db, id: i64) -> TransferRecord {
    db.get_transfer(id).await.expect("db").expect("transfer")
}

async fn part_indexes(db: &Db, id: i64) -> Vec<u32> {
    db.transfer_parts(id)
        .await
        .expect("parts")
        .into_iter()
        .map(|(p, _)| p.index)
        .collect()
}

/// What a holder write may change, to compare a row before and after fenced writes.
fn written(t: &TransferRecord) -> String {
    format!(
        "{} {:?} {:?} {:?} {} {:?} {:?} {} {} {:?} {:?}",
        t.state,
        t.upload_id,
        t.executor,
        t.spoke_id,
        t.bytes_done,
        t.checksum,
        t.note,
        t.attempts,
        t.updated_ms,
        t.finished_ms,
        t.lease_until
    )
}

async fn lease_suite(db: &Db) {
    db.migrate().await.expect("migrate");
    let app = db.create_app("leases", "", false, 1).await.expect("app");
    let new = NewTransfer {
        app_id: app.id,
        kind: "copy",
        src_account: 1,
        src_path: "a.bin",
        dst_account: 2,
        dst_path: "b.bin",
        size: 40 << 20,
        part_size: 8 << 20,
        owner: "hub-a",
        src_url: None,
    };
    let now = 1_000_000;
    let t = db
        .create_transfer(&new, "hub-a#1", now + 10_000, now)
        .await
        .expect("create");
    let id = t.id;
    assert_eq!(
        (t.lease_holder.as_deref(), t.lease_epoch),
        (Some("hub-a#1"), 1)
    );
    let a = Lease {
        holder: "hub-a#1".into(),
        epoch: 1,
    };
    // A live lease is neither listed as expired nor taken over.
    assert!(!db
        .expired_leases(now + 5_000, 100)
        .await
        .expect("expired")
        .contains(&id));
    assert_eq!(
        db.take_over_transfer(id, "hub-b#2", now + 5_000, now + 15_000)
            .await
            .expect("take over"),
        None
    );
    // The holder works: it assigns, records its upload, a part and progress, and renews.
    assert!(db
        .assign_transfer(id, &a, "spoke", Some(7), Some("local"), None, now)
        .await
        .expect("assign"));
    assert!(db
        .set_transfer_upload_id(id, &a, "upload-1")
        .await
        .expect("upload"));
    assert!(db
        .record_part(id, &a, &part(0), Some(7), now)
        .await
        .expect("part"));
    assert!(db
        .set_transfer_progress(id, &a, 8 << 20, now)
        .await
        .expect("progress"));
    assert_eq!(
        db.renew_leases("hub-a#1", now + 20_000)
            .await
            .expect("renew"),
        vec![(id, 1)]
    );
    assert_eq!(row(db, id).await.lease_until, Some(now + 20_000));

    // The holder goes quiet; its lease runs out and 20 hubs try to take the transfer at once.
    let at = now + 25_000;
    assert!(db
        .expired_leases(at, 100)
        .await
        .expect("expired")
        .contains(&id));
    let names: Vec<String> = (0..20).map(|i| format!("hub-{i}#{i:016x}")).collect();
    let tries = names
        .iter()
        .map(|n| db.take_over_transfer(id, n, at, at + 10_000));
    let results = futures::future::join_all(tries).await;
    let winners: Vec<(usize, Lease)> = results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.expect("a takeover attempt").map(|l| (i, l)))
        .collect();
    assert_eq!(winners.len(), 1, "exactly one takeover wins: {winners:?}");
    let (w, b) = winners[0].clone();
    assert_eq!(b.epoch, 2);
    assert_eq!(&*b.holder, names[w].as_str());
    let taken = row(db, id).await;
    assert_eq!(
        (taken.lease_holder.as_deref(), taken.lease_epoch),
        (Some(names[w].as_str()), 2)
    );
    assert!(!db
        .expired_leases(at, 100)
        .await
        .expect("expired")
        .contains(&id));

    // Every write of the stale holder changes nothing (each would on its own otherwise).
    assert!(!db
        .record_part(id, &a, &part(1), Some(7), at)
        .await
        .expect("part"));
    assert!(!db
        .set_transfer_progress(id, &a, 16 << 20, at)
        .await
        .expect("progress"));
    assert!(!db.forget_parts(id, &a, &[0], at).await.expect("forget"));
    assert!(!db
        .clear_transfer_upload_id(id, &a)
        .await
        .expect("clear upload"));
    assert!(!db
        .requeue_transfer(id, &a, "stale", at)
        .await
        .expect("requeue"));
    assert!(!db
        .finish_transfer(id, &a, "done", Some("x"), None, Some(40 << 20), at)
        .await
        .expect("finish"));
    assert!(db
        .renew_leases("hub-a#1", at + 60_000)
        .await
        .expect("renew")
        .is_empty());
    assert!(!db.holds(id, &a).await.expect("holds"));
    assert_eq!(written(&row(db, id).await), written(&taken));
    assert_eq!(part_indexes(db, id).await, vec![0]);
    // Once the transfer is queued again, the stale holder cannot dispatch it either.
    assert!(db
        .requeue_transfer(id, &b, "taken over", at)
        .await
        .expect("requeue"));
    assert!(db.clear_transfer_upload_id(id, &b).await.expect("clear"));
    let queued = row(db, id).await;
    assert!(!db
        .assign_transfer(id, &a, "hub", None, Some("local"), None, at)
        .await
        .expect("assign"));
    assert!(!db
        .set_transfer_upload_id(id, &a, "upload-stale")
        .await
        .expect("upload"));
    assert_eq!(written(&row(db, id).await), written(&queued));
    // The new holder carries on from the durable part and finishes it.
    assert!(db
        .assign_transfer(id, &b, "spoke", Some(8), Some("local"), None, at)
        .await
        .expect("assign"));
    assert!(db
        .set_transfer_upload_id(id, &b, "upload-2")
        .await
        .expect("upload"));
    for i in 1..5 {
        assert!(db
            .record_part(id, &b, &part(i), Some(8), at)
            .await
            .expect("part"));
    }
    assert_eq!(
        db.renew_leases(&b.holder, at + 5_000).await.expect("renew"),
        vec![(id, 2)]
    );
    assert!(db
        .finish_transfer(id, &b, "done", Some("sum"), None, Some(40 << 20), at)
        .await
        .expect("finish"));
    let done = row(db, id).await;
    assert_eq!(done.state, "done");
    assert_eq!(
        (
            done.lease_holder.as_deref(),
            done.lease_epoch,
            done.attempts
        ),
        (Some(names[w].as_str()), 2, 2)
    );
    assert_eq!(part_indexes(db, id).await, vec![0, 1, 2, 3, 4]);
    // A finished transfer is nobody's to take, and renewals no longer name it.
    assert_eq!(
        db.take_over_transfer(id, "hub-c#3", at + 1_000_000, at + 1_010_000)
            .await
            .expect("take over"),
        None
    );
    assert!(db
        .renew_leases(&b.holder, at)
        .await
        .expect("renew")
        .is_empty());

    // A client's cancel is not fenced: any hub may cancel a transfer another hub holds.
    let other = db
        .create_transfer(&new, "hub-a#1", now + 10_000, now)
        .await
        .expect("create");
    assert!(db
        .cancel_transfer(other.id, "cancelled by the client", now)
        .await
        .expect("cancel"));
    assert_eq!(row(db, other.id).await.state, "cancelled");
    assert!(db
        .renew_leases("hub-a#1", now)
        .await
        .expect("renew")
        .is_empty());

    // Progress never goes back, and a spoke that failed a transfer is kept away from it by a
    // write fenced like every other.
    let third = db
        .create_transfer(&new, "hub-a#1", now + 10_000, now)
        .await
        .expect("create");
    let c = Lease {
        holder: "hub-a#1".into(),
        epoch: third.lease_epoch,
    };
    assert!(db
        .assign_transfer(third.id, &c, "spoke", Some(7), Some("local"), None, now)
        .await
        .expect("assign"));
    for (to, shown) in [(8 << 20, 8 << 20), (4 << 20, 8 << 20), (12 << 20, 12 << 20)] {
        assert!(db
            .set_transfer_progress(third.id, &c, to, now)
            .await
            .expect("progress"));
        assert_eq!(row(db, third.id).await.bytes_done, shown, "after {to}");
    }
    let stale = Lease {
        holder: "hub-z#9".into(),
        epoch: third.lease_epoch,
    };
    let until = now + 300_000;
    assert!(!db
        .requeue_transfer_excluding(third.id, &stale, "n", 7, "boom", until, now)
        .await
        .expect("stale exclusion"));
    assert!(db
        .transfer_exclusions(third.id, now)
        .await
        .expect("exclusions")
        .is_empty());
    assert!(db
        .requeue_transfer_excluding(third.id, &c, "spoke 7 failed", 7, "boom", until, now)
        .await
        .expect("exclusion"));
    let t = row(db, third.id).await;
    assert_eq!(
        (t.state.as_str(), t.spoke_id, t.note.as_deref()),
        ("queued", None, Some("spoke 7 failed"))
    );
    // Failed again (by the same spoke, later): one row, the later time.
    assert!(db
        .assign_transfer(third.id, &c, "spoke", Some(7), Some("local"), None, now)
        .await
        .expect("assign"));
    assert!(db
        .requeue_transfer_excluding(third.id, &c, "again", 7, "boom again", until + 5, now)
        .await
        .expect("exclusion"));
    let ex = db
        .transfer_exclusions(third.id, now)
        .await
        .expect("exclusions");
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(
        (ex[0].spoke_id, ex[0].until_ms, ex[0].reason.as_str()),
        (7, until + 5, "boom again")
    );
    assert!(db
        .transfer_exclusions(third.id, until + 5)
        .await
        .expect("exclusions")
        .is_empty());
    // Spent exclusions are pruned, at most `limit` per statement.
    assert_eq!(
        db.prune_some(hub::db::TRANSFER_EXCLUSIONS, until + 5, 10)
            .await
            .expect("prune"),
        0
    );
    assert_eq!(
        db.prune_some(hub::db::TRANSFER_EXCLUSIONS, until + 6, 10)
            .await
            .expect("prune"),
        1
    );
}

#[tokio::test]
async fn lease_takeover_is_exactly_once_and_fenced_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = Db::connect(
        &format!("sqlite://{}", dir.path().join("t.db").display()),
        4,
    )
    .await
    .expect("sqlite");
    lease_suite(&db).await;
}

#[tokio::test]
async fn lease_takeover_is_exactly_once_and_fenced_on_postgres() {
    let pg = Postgres::start().await.expect("postgres");
    // As many connections as contenders: the 20 takeovers really run at once.
    let db = Db::connect(&pg.url(), 20).await.expect("postgres");
    lease_suite(&db).await;
    db.close().await;
}

// ---- two hub processes sharing one PostgreSQL ----

/// Two `hub` processes on one PostgreSQL (sharing the master key), two spokes connected to
/// both, and a 256 MiB object in S3 to copy between two buckets.
struct TwoHubs {
    a: HubProc,
    b: HubProc,
    spokes: Vec<SpokeProc>,
    db: Db,
    setup: Setup,
    _pg: Postgres,
    _dir: tempfile::TempDir,
}

fn hub_yaml(pg: &Postgres, rate: Option<u64>) -> String {
    hub_yaml_with(pg, rate, 600, LEASE)
}

/// [`hub_yaml`] with a start-up grace (before a hub runs transfers itself) and a lease.
fn hub_yaml_with(pg: &Postgres, rate: Option<u64>, grace_secs: u64, lease: Duration) -> String {
    let rate = rate.map_or("null".to_owned(), |r| r.to_string());
    format!(
        "database:\n  url: {:?}\nlog:\n  level: info\n\
         offload:\n  part_size: {}\n  part_concurrency: 4\n  spoke_rate_limit: {rate}\n  \
         startup_grace_secs: {grace_secs}\n\
         network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n\
         transfers:\n  lease_ms: {}\n",
        pg.url(),
        8 * MIB,
        lease.as_millis()
    )
}

/// With spokes copying at most `rate` bytes per second per transfer (`None`: as fast as they
/// can).
async fn two_hubs(rate: Option<u64>, seed: u64) -> TwoHubs {
    let pg = Postgres::start().await.expect("postgres");
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("hub.yaml");
    std::fs::write(&base, hub_yaml(&pg, rate)).expect("config");
    let a = HubProc::start(&dir.path().join("a"), &base, &dir.path().join("a.log")).await;
    // B opens A's accounts: the same master key.
    let b_data = dir.path().join("b");
    std::fs::create_dir_all(&b_data).expect("b");
    std::fs::copy(a.data.join("master.key"), b_data.join("master.key")).expect("key");
    let b = HubProc::start(&b_data, &base, &dir.path().join("b.log")).await;
    let mut spokes = Vec::new();
    for name in ["s1", "s2"] {
        let join = join_token(&a, "local").await;
        let sdir = dir.path().join(name);
        let id = enrolled_id(&enroll(&join, &sdir, &["--name", name]).await);
        let cfg = std::fs::read_to_string(sdir.join("spoke.yaml")).expect("spoke.yaml");
        assert!(
            cfg.contains(&format!(":{}", a.port)) && cfg.contains(&format!(":{}", b.port)),
            "the spoke dials both hubs: {cfg}"
        );
        spokes.push(SpokeProc::run(sdir, id, &[]));
    }
    for s in &spokes {
        wait_healthy(&a, s.id).await;
        wait_healthy(&b, s.id).await;
    }
    let setup = setup_seeded(&a, 256 * MIB, seed).await;
    let db = Db::connect(&pg.url(), 2).await.expect("db");
    TwoHubs {
        a,
        b,
        spokes,
        db,
        setup,
        _pg: pg,
        _dir: dir,
    }
}

/// The lease holder prefix of a hub process: its advertised QUIC address.
fn holder_of(hub: &HubProc) -> String {
    format!("127.0.0.1:{}#", hub.port)
}

/// Polls the transfer row until `pred` holds, at most `limit`.
async fn until_row(
    db: &Db,
    id: i64,
    limit: Duration,
    what: &str,
    pred: impl Fn(&TransferRecord, usize) -> bool,
) -> TransferRecord {
    let deadline = Instant::now() + limit;
    loop {
        let t = row(db, id).await;
        let parts = part_indexes(db, id).await.len();
        if pred(&t, parts) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {t:?} with {parts} parts"
        );
        assert!(
            !matches!(t.state.as_str(), "failed" | "cancelled"),
            "the transfer ended while waiting for {what}: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lines of a log that are the event `message` about transfer `id`.
fn events(log: &str, message: &str, id: i64) -> Vec<String> {
    let field = format!("transfer={id}");
    log.lines()
        .filter(|l| l.contains(message) && l.split_whitespace().any(|w| w == field))
        .map(str::to_owned)
        .collect()
}

/// The `name=N` field of a log line.
fn field(line: &str, name: &str) -> usize {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn spoke_logs(spokes: &[SpokeProc]) -> String {
    spokes
        .iter()
        .map(SpokeProc::log_text)
        .collect::<Vec<_>>()
        .join("\n")
}

async fn destination_sha(s: &Setup) -> String {
    sha_of(&connector(&s.dst_creds).await, "big.bin").await
}

/// SIGKILL of the hub holding a running 256 MiB transfer, never restarted: the other hub takes
/// the lease over once it expired and completes the transfer from the durable parts within
/// lease + 10 s, byte-identical, with every part durable at the kill never sent again and
/// exactly one completion.
#[tokio::test]
async fn a_killed_holders_transfer_is_completed_by_the_other_hub() {
    let mut n = two_hubs(None, 21).await;
    let id = start_copy(&n.a, &n.setup).await;
    // Three quarters durable: what is left must fit in the 10 s after the lease runs out,
    // with moto and the spokes sharing two cores with other tests.
    let t = until_row(
        &n.db,
        id,
        Duration::from_secs(60),
        "durable parts",
        |_, p| p >= PARTS * 3 / 4,
    )
    .await;
    assert!(
        t.lease_holder
            .as_deref()
            .unwrap_or("")
            .starts_with(&holder_of(&n.a)),
        "{t:?}"
    );
    assert_eq!((t.state.as_str(), t.lease_epoch), ("running", 1), "{t:?}");
    n.a.kill().await;
    let killed = Instant::now();
    let durable = part_indexes(&n.db, id).await;
    assert!(durable.len() < PARTS, "killed after the transfer ended");

    // The lease runs out at most LEASE after the kill; the next scheduler tick of B takes it.
    until_row(
        &n.db,
        id,
        LEASE + Duration::from_secs(2),
        "the other hub to take the lease over",
        |t, _| {
            t.lease_holder
                .as_deref()
                .unwrap_or("")
                .starts_with(&holder_of(&n.b))
        },
    )
    .await;
    let taken = killed.elapsed();
    let budget = (LEASE + Duration::from_secs(10)).saturating_sub(killed.elapsed());
    let done = tokio::time::timeout(
        budget,
        until_row(
            &n.db,
            id,
            Duration::from_secs(600),
            "the other hub to complete the transfer",
            |t, _| t.state == "done",
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not completed within lease + 10 s after the kill (taken over after {taken:?})\n\
             hub B:\n{}\nspokes:\n{}",
            n.b.log_text(),
            spoke_logs(&n.spokes)
        )
    });
    let took = killed.elapsed();
    assert!(
        done.lease_holder
            .as_deref()
            .unwrap_or("")
            .starts_with(&holder_of(&n.b)),
        "{done:?}"
    );
    assert_eq!(done.lease_epoch, 2, "one takeover: {done:?}");
    assert_eq!(done.executor.as_deref(), Some("spoke"), "{done:?}");
    assert_eq!(destination_sha(&n.setup).await, n.setup.sha);
    assert_eq!(part_indexes(&n.db, id).await.len(), PARTS);

    // Every run a spoke started shows its plan: the first had nothing durable; each later
    // one (the other hub's) was given every part durable at the kill as done, and only the
    // rest to send. A resumed run re-sending durable parts would have `done=0`.
    let logs = spoke_logs(&n.spokes);
    let starts = events(&logs, "transfer started", id);
    let (first, resumed): (Vec<_>, Vec<_>) = starts.iter().partition(|l| field(l, "done") == 0);
    assert_eq!(first.len(), 1, "one run from scratch: {starts:#?}");
    assert!(!resumed.is_empty(), "a resumed run: {starts:#?}");
    for l in &resumed {
        assert!(
            field(l, "done") >= durable.len(),
            "{l} (durable at the kill: {durable:?})"
        );
        assert_eq!(field(l, "done") + field(l, "parts"), PARTS, "{l}");
    }
    // Exactly one completion, by the new holder (which completes the upload itself: the
    // killed hub's spoke run, which may finish its parts before its spoke notices the hub is
    // gone, never completes it).
    assert_eq!(events(&n.b.log_text(), "transfer done", id).len(), 1);
    assert!(
        events(&n.b.log_text(), "took over a transfer", id).len() == 1,
        "{}",
        n.b.log_text()
    );
    eprintln!(
        "SIGKILL of the holder with {}/{PARTS} parts durable: taken over after {taken:?}, \
         completed by the other hub {took:?} after the kill (lease {LEASE:?})",
        durable.len()
    );
}

/// SIGSTOP of the holder past its lease: the other hub takes the transfer over (epoch 2) and
/// runs it; after SIGCONT the stale hub drops it: it assigns it nowhere, runs it nowhere,
/// completes nothing, and the transfer ends done by the new holder, byte-identical.
#[tokio::test]
async fn a_stopped_holder_cannot_dispatch_or_complete_after_a_takeover() {
    let n = two_hubs(Some(24 * MIB), 22).await;
    let id = start_copy(&n.a, &n.setup).await;
    until_row(
        &n.db,
        id,
        Duration::from_secs(60),
        "durable parts",
        |_, p| p >= 4,
    )
    .await;
    n.a.signal("-STOP");
    let stopped = Instant::now();
    let taken = until_row(
        &n.db,
        id,
        LEASE + Duration::from_secs(10),
        "the other hub to take over and assign the transfer",
        |t, _| {
            t.lease_holder
                .as_deref()
                .unwrap_or("")
                .starts_with(&holder_of(&n.b))
                && t.state == "running"
                && t.executor.as_deref() == Some("spoke")
        },
    )
    .await;
    assert_eq!(taken.lease_epoch, 2, "{taken:?}");
    assert!(
        stopped.elapsed() >= LEASE / 2,
        "taken over while the lease still held"
    );
    n.a.signal("-CONT");
    // The stale hub finds out at its next renewal and drops its state and its spoke's run.
    e2e::assert_eventually!(
        !events(&n.a.log_text(), "lost the lease", id).is_empty(),
        LEASE + Duration::from_secs(5),
        "the stale hub to drop the transfer"
    );
    let done = until_row(
        &n.db,
        id,
        Duration::from_secs(60),
        "the transfer to complete",
        |t, _| t.state == "done",
    )
    .await;
    assert!(
        done.lease_holder
            .as_deref()
            .unwrap_or("")
            .starts_with(&holder_of(&n.b)),
        "{done:?}"
    );
    // Two dispatches: A's first, B's after the takeover; none by the stale hub after SIGCONT.
    assert_eq!(
        (done.lease_epoch, done.attempts),
        (2, 2),
        "{done:?}\nhub B:\n{}\nspokes:\n{}",
        n.b.log_text(),
        spoke_logs(&n.spokes)
    );
    assert_eq!(done.executor.as_deref(), Some("spoke"), "{done:?}");
    let a_log = n.a.log_text();
    assert_eq!(
        events(&a_log, "transfer assigned to spoke", id).len(),
        1,
        "{a_log}"
    );
    assert!(
        events(&a_log, "running the transfer on the hub", id).is_empty(),
        "{a_log}"
    );
    assert!(events(&a_log, "transfer done", id).is_empty(), "{a_log}");
    assert_eq!(events(&n.b.log_text(), "transfer done", id).len(), 1);
    assert_eq!(destination_sha(&n.setup).await, n.setup.sha);
    assert_eq!(part_indexes(&n.db, id).await.len(), PARTS);
    // The stale hub is alive and well: it still serves, and its next transfer is its own.
    let again = start_copy(&n.a, &n.setup).await;
    let t = until_row(
        &n.db,
        again,
        Duration::from_secs(30),
        "a new transfer",
        |t, _| t.state == "running",
    )
    .await;
    assert!(
        t.lease_holder
            .as_deref()
            .unwrap_or("")
            .starts_with(&holder_of(&n.a)),
        "{t:?}"
    );
}

/// A hub that lost a transfer while its connection to the spoke stayed up (its renewals did
/// not reach the database in time, here: another hub took the lease over as if they had not)
/// tells that spoke to cancel its run, and the spoke cancels only the run that hub started:
/// the new holder's run of the same transfer on the same spoke goes on and completes. A spoke
/// that cancelled by transfer id alone would stop the new holder's run, and the transfer
/// would never end.
#[tokio::test]
async fn a_hub_that_lost_a_transfer_cancels_only_its_own_run_on_a_shared_spoke() {
    let pg = Postgres::start().await.expect("postgres");
    let dir = tempfile::tempdir().expect("tmp");
    let yaml = hub_yaml(&pg, Some(16 * MIB));
    let a = e2e::TestHub::start_with(e2e::HubOptions {
        database_url: Some(pg.url()),
        dir: Some(dir.path().join("a")),
        yaml: Some(yaml.clone()),
        ..Default::default()
    })
    .await
    .expect("hub a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(b_dir.join("data")).expect("b dir");
    std::fs::copy(a.data_dir.join("master.key"), b_dir.join("data/master.key")).expect("key");
    let b = e2e::TestHub::start_with(e2e::HubOptions {
        database_url: Some(pg.url()),
        dir: Some(b_dir),
        yaml: Some(yaml),
        ..Default::default()
    })
    .await
    .expect("hub b");
    // One spoke, connected to both hubs.
    let spoke = SpokeProc::start(&a, dir.path(), "shared").await;
    wait_healthy(&a, spoke.id).await;
    wait_healthy(&b, spoke.id).await;
    let s = setup_seeded(&a, 96 * MIB, 23).await;
    let id = start_copy(&a, &s).await;
    let db = &a.state.db;
    until_row(db, id, Duration::from_secs(60), "a durable part", |t, p| {
        t.spoke_id == Some(spoke.id) && p >= 1
    })
    .await;
    // B takes the lease over now, as it would once A's lease ran out, and gives the transfer
    // to the same spoke; A, whose renewals still work, finds out within a third of its lease.
    assert!(hub::transfers::take_over(&b.state, id, hub::state::now_ms() + 3_600_000).await);
    let taken = row(db, id).await;
    assert_eq!(taken.lease_epoch, 2, "{taken:?}");
    assert_eq!(taken.spoke_id, Some(spoke.id), "{taken:?}");
    let done = until_row(
        db,
        id,
        Duration::from_secs(60),
        "the new holder's run",
        |t, _| t.state == "done",
    )
    .await;
    assert_eq!(
        done.lease_holder.as_deref(),
        Some(&*hub::transfers::holder(&b.state))
    );
    assert_eq!((done.lease_epoch, done.attempts), (2, 2), "{done:?}");
    assert_eq!(destination_sha(&s).await, s.sha);
    let log = spoke.log_text();
    assert_eq!(events(&log, "transfer started", id).len(), 2, "{log}");
    assert_eq!(events(&log, "transfer done", id).len(), 1, "{log}");
}

/// A holder whose lease was taken over while its own run goes on (it runs the transfer
/// itself, and its next renewal is seconds away) records no part into the transfer from then
/// on: its next part report is fenced off, it drops the transfer and stops its run, and the
/// new holder's spoke moves the rest. Only the parts recorded before the takeover carry the
/// stale hub's name.
#[tokio::test]
async fn a_stale_holders_own_run_records_no_part_after_a_takeover() {
    let pg = Postgres::start().await.expect("postgres");
    let dir = tempfile::tempdir().expect("tmp");
    // A long lease: the stale hub's renewal, which would also stop it, comes late.
    let yaml = hub_yaml_with(&pg, None, 0, Duration::from_secs(60));
    let b = e2e::TestHub::start_with(e2e::HubOptions {
        database_url: Some(pg.url()),
        dir: Some(dir.path().join("b")),
        yaml: Some(yaml.clone()),
        ..Default::default()
    })
    .await
    .expect("hub b");
    // The spoke knows only B: A, started after its enrollment, runs transfers itself.
    let spoke = SpokeProc::start(&b, dir.path(), "b-only").await;
    wait_healthy(&b, spoke.id).await;
    let a_dir = dir.path().join("a");
    std::fs::create_dir_all(a_dir.join("data")).expect("a dir");
    std::fs::copy(b.data_dir.join("master.key"), a_dir.join("data/master.key")).expect("key");
    let a = e2e::TestHub::start_with(e2e::HubOptions {
        database_url: Some(pg.url()),
        dir: Some(a_dir),
        yaml: Some(yaml),
        ..Default::default()
    })
    .await
    .expect("hub a");
    let s = setup_seeded(&a, 256 * MIB, 24).await;
    let id = start_copy(&a, &s).await;
    let db = &a.state.db;
    until_row(db, id, Duration::from_secs(60), "A's own run", |t, p| {
        t.executor.as_deref() == Some("hub") && p >= 2
    })
    .await;
    assert!(hub::transfers::take_over(&b.state, id, hub::state::now_ms() + 3_600_000).await);
    // A part of A in flight at the takeover was committed before it (the takeover waits for
    // it): what is durable now is all A may ever have recorded.
    let by_a: Vec<u32> = db
        .transfer_parts(id)
        .await
        .expect("parts")
        .into_iter()
        .filter(|(_, spoke)| spoke.is_none())
        .map(|(p, _)| p.index)
        .collect();
    let done = until_row(
        db,
        id,
        Duration::from_secs(90),
        "B's spoke to finish",
        |t, _| t.state == "done",
    )
    .await;
    assert_eq!(
        done.lease_holder.as_deref(),
        Some(&*hub::transfers::holder(&b.state))
    );
    assert_eq!(done.lease_epoch, 2, "{done:?}");
    assert_eq!(
        (done.executor.as_deref(), done.spoke_id),
        (Some("spoke"), Some(spoke.id)),
        "{done:?}"
    );
    let parts = db.transfer_parts(id).await.expect("parts");
    assert_eq!(parts.len(), PARTS);
    let after: Vec<u32> = parts
        .iter()
        .filter(|(_, spoke)| spoke.is_none())
        .map(|(p, _)| p.index)
        .collect();
    assert_eq!(
        after, by_a,
        "parts the stale hub recorded after the takeover"
    );
    assert_eq!(destination_sha(&s).await, s.sha);
}
