//! Progress of a transfer whose part is retried: a proxy in front of S3 (`e2e::cut_proxy`)
//! cuts the source read of one part mid-body, the engine retries the part, and the progress
//! the API shows does not count the cut attempt's bytes on top of the retry's. Polled all
//! along, `bytes_done` never passes what the source delivered in responses that were not cut
//! (the proxy's high-water mark), never exceeds `bytes_total`, never goes back, and ends at
//! the total. Run by a spoke, and by the hub itself.

use crate::offload::{
    account, connector, first_file_id, s3_creds, sha_of, start_copy, transfer, write_object, Setup,
};
use crate::spokes::{wait_healthy, SpokeProc};
use e2e::cut_proxy::CutProxy;
use e2e::servers::S3Server;
use e2e::{HubOptions, TestHub};
use serde_json::json;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Three parts of 8 MiB.
const SIZE: u64 = 24 * MIB;
const PART: u64 = 8 * MIB;
/// The first attempt of part 1 is cut after this many bytes.
const CUT_AFTER: u64 = 6 * MIB;

/// One part at a time (the proxy's high-water mark is then exactly what an honest count may
/// reach), no wait for spokes before the hub works itself.
fn yaml() -> String {
    format!(
        "offload:\n  part_size: {PART}\n  part_concurrency: 1\n  startup_grace_secs: 0\n\
         network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n"
    )
}

async fn retried_part(on_spoke: bool) {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(yaml()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let spoke = match on_spoke {
        true => {
            let s = SpokeProc::start(&hub, root.path(), "s").await;
            wait_healthy(&hub, s.id).await;
            Some(s)
        }
        false => None,
    };
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("src").await.expect("bucket");
    s3.create_bucket("dst").await.expect("bucket");
    let direct = s3_creds(&s3, "src");
    let sha = write_object(&connector(&direct).await, "big.bin", SIZE, 23).await;
    // The source account reads through the proxy: about 3 s for the object at 8 MiB/s, and
    // part 1's first read cut after 6 MiB.
    let proxy = CutProxy::start(&s3.endpoint()).await.expect("proxy");
    proxy.pace(8 * MIB);
    proxy.cut_once(PART, CUT_AFTER);
    let mut src_creds = direct.clone();
    src_creds["endpoint"] = json!(proxy.endpoint());
    let src = account(&hub, src_creds).await;
    let dst_creds = s3_creds(&s3, "dst");
    let dst = account(&hub, dst_creds.clone()).await;
    let file_id = first_file_id(&hub, src).await;
    let setup = Setup {
        s3,
        src,
        dst,
        file_id,
        sha,
        dst_creds,
    };
    let id = start_copy(&hub, &setup).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = 0;
    let mut polls = 0;
    let mut distinct = std::collections::BTreeSet::new();
    let t = loop {
        let t = transfer(&hub, id).await;
        // Read after the API's answer: the mark only grows, so it covers what that answer saw.
        let peak = proxy.peak();
        let done = t["bytes_done"].as_u64().expect("bytes_done");
        assert_eq!(t["bytes_total"], SIZE, "{t}");
        assert!(
            done <= SIZE,
            "bytes_done {done} exceeds bytes_total {SIZE}: {t}"
        );
        assert!(
            done >= last,
            "bytes_done went back from {last} to {done}: {t}"
        );
        assert!(
            done <= peak,
            "bytes_done {done} counts bytes no uncut response delivered (at most {peak}): \
             {t}\n{:?}",
            proxy.deliveries()
        );
        last = done;
        polls += 1;
        distinct.insert(done);
        match t["state"].as_str() {
            Some("done") => break t,
            Some("failed" | "cancelled") => panic!("the transfer ended badly: {t}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the copy took too long: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{} polls, {} distinct progress values, deliveries {:?}",
        polls,
        distinct.len(),
        proxy.deliveries()
    );
    assert_eq!(t["bytes_done"], SIZE, "{t}");
    match &spoke {
        Some(s) => {
            assert_eq!(t["executor"], "spoke", "{t}");
            assert_eq!(t["spoke"], s.id, "{t}");
            assert!(s.log_text().contains("part retried"), "{}", s.log_text());
        }
        None => assert_eq!(t["executor"], "hub", "{t}"),
    }
    // The cut happened once, to part 1's first read, and the part was read again whole.
    let d = proxy.deliveries();
    let cut: Vec<_> = d.iter().filter(|d| d.cut).collect();
    assert_eq!(cut.len(), 1, "{d:?}");
    assert_eq!((cut[0].start, cut[0].delivered), (PART, CUT_AFTER), "{d:?}");
    assert!(
        d.iter()
            .any(|x| !x.cut && x.start == PART && x.delivered == PART),
        "{d:?}"
    );
    // The progress moved through the retry rather than jumping to the end.
    assert!(distinct.len() >= 4, "progress values seen: {distinct:?}");
    assert_eq!(
        sha_of(&connector(&setup.dst_creds).await, "big.bin").await,
        setup.sha
    );
}

/// A spoke's run: its progress reports count a retried part once.
#[tokio::test]
async fn retried_part_counts_once_on_a_spoke() {
    retried_part(true).await;
}

/// The hub's own run (no spoke): the same.
#[tokio::test]
async fn retried_part_counts_once_on_the_hub() {
    retried_part(false).await;
}
