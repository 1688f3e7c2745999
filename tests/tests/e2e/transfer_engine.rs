//! The transfer engine against real S3 (moto): multipart parts, resume, verification.
//!
//! Each case writes a generated object through a [`Connector`], copies it with the engine and
//! reads the result back through a `Connector` again, so the multipart client and OpenDAL must
//! agree on where objects live.

use bytes::Bytes;
use e2e::servers::S3Server;
use e2e::{pattern, sha256_hex};
use futures::TryStreamExt;
use sha2::Digest;
use shared::storage::multipart::S3Multipart;
use shared::storage::service::{FsSettings, S3Settings};
use shared::storage::transfer::{
    choose_part_size, composite_sha256, copy_parts, copy_parts_via, copy_stream, plan_parts,
    ByteStream, CancellationToken, CopyEvent, CopyOptions, OpenFuture, PartDone, PartPlan,
    RangeSource, PROGRESS_STEP,
};
use shared::storage::{ConnectOptions, Connector, ServiceConfig, StorageError, StoragePath};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const MIB: usize = 1024 * 1024;

fn p(s: &str) -> StoragePath {
    StoragePath::parse(s).expect("valid path")
}

/// A moto server with the given buckets.
async fn s3_with(buckets: &[&str]) -> S3Server {
    let s3 = S3Server::start().await.expect("moto");
    for b in buckets {
        s3.create_bucket(b).await.expect("bucket");
    }
    s3
}

fn settings(s3: &S3Server, bucket: &str, root: Option<&str>) -> S3Settings {
    S3Settings {
        bucket: bucket.into(),
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: s3.access_key_id().into(),
        secret_access_key: s3.secret_access_key().into(),
        root: root.map(str::to_owned),
    }
}

/// A connector to the loopback test servers (no SSRF guard: they are internal addresses).
async fn connect(cfg: ServiceConfig) -> Connector {
    let opts = ConnectOptions {
        egress: e2e::loopback_egress(),
        ..ConnectOptions::default()
    };
    Connector::connect(&cfg, &opts).await.expect("connector")
}

async fn write_object(c: &Connector, path: &StoragePath, data: &[u8]) {
    let chunks: Vec<Result<Bytes, String>> = data
        .chunks(MIB)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let e = c
        .write(path, futures::stream::iter(chunks))
        .await
        .expect("write source");
    assert_eq!(e.size, data.len() as u64);
}

async fn read_all(c: &Connector, path: &StoragePath) -> Vec<u8> {
    let s = c.read(path, None).await.expect("read");
    let parts: Vec<Bytes> = s.try_collect().await.expect("stream");
    parts.concat()
}

/// Every event already sent (the copy has returned, so nothing more is coming that matters).
fn drain(rx: &mut mpsc::UnboundedReceiver<CopyEvent>) -> Vec<CopyEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

/// Sum of the progress events, the verified parts (by index) and the retries.
fn tally(events: &[CopyEvent]) -> (u64, Vec<PartDone>, usize) {
    let mut bytes = 0;
    let mut done = Vec::new();
    let mut retries = 0;
    for ev in events {
        match ev {
            CopyEvent::Bytes { len: n, .. } => {
                assert!(*n <= PROGRESS_STEP as u64, "a progress step of {n} bytes");
                bytes += n;
            }
            CopyEvent::PartDone(d) => done.push(d.clone()),
            CopyEvent::PartRetry { .. } => retries += 1,
        }
    }
    done.sort_by_key(|d| d.index);
    (bytes, done, retries)
}

/// The composite checksum computed independently, from the data and the plan.
fn expected_composite(data: &[u8], plan: &[PartPlan]) -> String {
    let mut raw = Vec::new();
    for part in plan {
        let slice = &data[part.offset as usize..(part.offset + part.len) as usize];
        raw.extend_from_slice(&sha2::Sha256::digest(slice));
    }
    format!("{}-{}", hex::encode(sha2::Sha256::digest(&raw)), plan.len())
}

/// Checks the parts against the plan and the data they came from.
fn check_parts(done: &[PartDone], plan: &[PartPlan], data: &[u8]) {
    assert_eq!(done.len(), plan.len(), "one PartDone per planned part");
    for (d, part) in done.iter().zip(plan) {
        assert_eq!((d.index, d.len), (part.index, part.len));
        let slice = &data[part.offset as usize..(part.offset + part.len) as usize];
        assert_eq!(d.sha256, sha256_hex(slice), "part {}", part.index);
        // The engine compared the ETag with the MD5 of what it sent; moto's part ETags are
        // plain MD5s, so the comparison did happen.
        assert!(
            d.etag.len() == 32 && d.etag.bytes().all(|b| b.is_ascii_hexdigit()),
            "part {} ETag {:?}",
            part.index,
            d.etag
        );
    }
}

fn completion(done: &[PartDone]) -> Vec<(u16, String)> {
    done.iter()
        .map(|d| (d.index as u16 + 1, d.etag.clone()))
        .collect()
}

fn opts(concurrency: usize, rate_limit: Option<u64>) -> CopyOptions {
    CopyOptions {
        concurrency,
        rate_limit,
        part_retries: 3,
    }
}

/// A ~40 MiB object, bucket A to bucket B (below a root), 8 MiB parts, three at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_copy_between_buckets() {
    let s3 = s3_with(&["engine-a", "engine-b"]).await;
    let a = connect(ServiceConfig::S3(settings(&s3, "engine-a", None))).await;
    let b_settings = settings(&s3, "engine-b", Some("/copies/"));
    let b = connect(ServiceConfig::S3(b_settings.clone())).await;
    let data = pattern(40 * MIB + 12_345, 1);
    let (src, dst) = (p("src/big.bin"), p("dst/big copy.bin"));
    write_object(&a, &src, &data).await;

    let size = data.len() as u64;
    let part_size = choose_part_size(size, 8 * MIB as u64);
    assert_eq!(part_size, 8 * MIB as u64);
    let plan = plan_parts(size, part_size);
    assert_eq!(plan.len(), 6);
    let mp = S3Multipart::for_settings(&b_settings, &dst, &e2e::loopback_egress()).expect("target");
    assert_eq!(mp.key(), "copies/dst/big copy.bin");
    let upload = mp.create().await.expect("create upload");
    let (tx, mut rx) = mpsc::unbounded_channel();
    copy_parts(
        &a,
        &src,
        &mp,
        &upload,
        plan.clone(),
        &opts(3, None),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("copy parts");
    let (bytes, done, retries) = tally(&drain(&mut rx));
    assert_eq!(retries, 0);
    assert_eq!(bytes, size, "progress events account for every byte");
    check_parts(&done, &plan, &data);

    // The composite checksum is the one computed from the data, whatever the record order.
    let composite = composite_sha256(&done);
    assert_eq!(composite, expected_composite(&data, &plan));
    let mut reversed = done.clone();
    reversed.reverse();
    assert_eq!(composite_sha256(&reversed), composite);

    let listed = mp.list_parts(&upload).await.expect("list parts");
    assert_eq!(
        listed,
        done.iter()
            .map(|d| (d.index as u16 + 1, d.etag.clone(), d.len))
            .collect::<Vec<_>>()
    );
    let etag = mp
        .complete(&upload, &completion(&done))
        .await
        .expect("complete");
    assert!(etag.ends_with("-6"), "multipart ETag {etag:?}");

    // Visible through the connector of bucket B, at the path, below its root.
    let entry = b.stat_file(&dst).await.expect("stat copy");
    assert_eq!(entry.size, size);
    assert_eq!(sha256_hex(&read_all(&b, &dst).await), sha256_hex(&data));
}

/// Parts 0 and 1 in one run, the rest in a second run on a fresh client (as after a restart),
/// then completion from the records of both runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_copy_resumes_on_a_new_client() {
    let s3 = s3_with(&["resume-a", "resume-b"]).await;
    let a = connect(ServiceConfig::S3(settings(&s3, "resume-a", None))).await;
    let b_settings = settings(&s3, "resume-b", None);
    let b = connect(ServiceConfig::S3(b_settings.clone())).await;
    let data = pattern(22 * MIB + 7, 2);
    let (src, dst) = (p("in.bin"), p("out/resumed.bin"));
    write_object(&a, &src, &data).await;
    let plan = plan_parts(data.len() as u64, choose_part_size(data.len() as u64, 0));
    assert_eq!(plan.len(), 5, "5 MiB parts");

    let first =
        S3Multipart::for_settings(&b_settings, &dst, &e2e::loopback_egress()).expect("target");
    let upload = first.create().await.expect("create upload");
    let (tx, mut rx) = mpsc::unbounded_channel();
    copy_parts(
        &a,
        &src,
        &first,
        &upload,
        plan[..2].to_vec(),
        &opts(2, None),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("first run");
    let (_, mut done, _) = tally(&drain(&mut rx));
    assert_eq!(done.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1]);
    drop(first);

    let second = S3Multipart::for_settings(&b_settings, &dst, &e2e::loopback_egress())
        .expect("target again");
    let held = second.list_parts(&upload).await.expect("list after run 1");
    assert_eq!(
        held.iter().map(|p| (p.0, p.2)).collect::<Vec<_>>(),
        [(1, plan[0].len), (2, plan[1].len)]
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    copy_parts(
        &a,
        &src,
        &second,
        &upload,
        plan[2..].to_vec(),
        &opts(3, None),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("second run");
    let (bytes, more, _) = tally(&drain(&mut rx));
    assert_eq!(bytes, plan[2..].iter().map(|p| p.len).sum::<u64>());
    done.extend(more);
    done.sort_by_key(|d| d.index);
    check_parts(&done, &plan, &data);

    let held = second.list_parts(&upload).await.expect("list after run 2");
    assert_eq!(
        held,
        done.iter()
            .map(|d| (d.index as u16 + 1, d.etag.clone(), d.len))
            .collect::<Vec<_>>(),
        "S3 holds every part"
    );
    second
        .complete(&upload, &completion(&done))
        .await
        .expect("complete");
    assert_eq!(sha256_hex(&read_all(&b, &dst).await), sha256_hex(&data));
    assert_eq!(
        composite_sha256(&done),
        expected_composite(&data, &plan),
        "two runs give the checksum of one"
    );
    // A completed upload is gone.
    assert!(matches!(
        second.list_parts(&upload).await,
        Err(StorageError::NotFound)
    ));
}

/// 16 MiB/s over 24 MiB in three concurrent parts takes about 1.4 s (the limiter's 0.1 s burst
/// is free); the bound is lenient, this checks the limiter is applied across parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_copy_is_rate_limited() {
    let s3 = s3_with(&["rate-a", "rate-b"]).await;
    let a = connect(ServiceConfig::S3(settings(&s3, "rate-a", None))).await;
    let b_settings = settings(&s3, "rate-b", None);
    let data = pattern(24 * MIB, 3);
    let (src, dst) = (p("in.bin"), p("out.bin"));
    write_object(&a, &src, &data).await;
    let plan = plan_parts(data.len() as u64, 8 * MIB as u64);
    let mp = S3Multipart::for_settings(&b_settings, &dst, &e2e::loopback_egress()).expect("target");
    let upload = mp.create().await.expect("create upload");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    copy_parts(
        &a,
        &src,
        &mp,
        &upload,
        plan.clone(),
        &opts(3, Some(16 * MIB as u64)),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("copy parts");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1200), "took {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (bytes, done, _) = tally(&drain(&mut rx));
    assert_eq!(bytes, data.len() as u64);
    check_parts(&done, &plan, &data);

    // S3 checks the ETags it is given at completion.
    let mut wrong = completion(&done);
    wrong.swap(0, 1);
    let (n0, n1) = (wrong[1].0, wrong[0].0);
    wrong[0].0 = n0;
    wrong[1].0 = n1;
    match mp.complete(&upload, &wrong).await {
        Err(StorageError::Other(m)) => assert!(m.contains("InvalidPart"), "{m}"),
        other => panic!("completion with swapped ETags: {other:?}"),
    }
    mp.complete(&upload, &completion(&done))
        .await
        .expect("complete");
}

/// A source in memory that paces its chunks (256 KiB every 4 ms, a slow provider or a long
/// path) and records, for each range opened, how many ranges had delivered all their bytes.
struct Paced {
    data: Bytes,
    delivered: Arc<AtomicUsize>,
    streaming: Arc<AtomicUsize>,
    most_streaming: Arc<AtomicUsize>,
    opened: std::sync::Mutex<Vec<(u64, usize)>>,
}

impl RangeSource for Paced {
    fn open(&self, offset: u64, len: u64) -> OpenFuture<'_> {
        Box::pin(async move {
            let delivered = self.delivered.load(Ordering::SeqCst);
            self.opened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((offset, delivered));
            let now = self.streaming.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_streaming.fetch_max(now, Ordering::SeqCst);
            let range = self.data.slice(offset as usize..(offset + len) as usize);
            let chunks: std::collections::VecDeque<Bytes> = (0..range.len())
                .step_by(256 << 10)
                .map(|i| range.slice(i..(i + (256 << 10)).min(range.len())))
                .collect();
            let (delivered, streaming) = (self.delivered.clone(), self.streaming.clone());
            let s = futures::stream::unfold(chunks, move |mut chunks| {
                let (delivered, streaming) = (delivered.clone(), streaming.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(4)).await;
                    let c = chunks.pop_front()?;
                    if chunks.is_empty() {
                        delivered.fetch_add(1, Ordering::SeqCst);
                        streaming.fetch_sub(1, Ordering::SeqCst);
                    }
                    Some((Ok::<Bytes, std::io::Error>(c), chunks))
                }
            });
            Ok(Box::pin(s) as ByteStream)
        })
    }
}

/// Parts are pipelined: a part hands its reading slot on before its last bytes arrive, so the
/// next part's request overlaps them (on a long path, a round trip per part saved); never
/// more than twice `concurrency` parts read at once, and the copy is byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_are_requested_before_the_previous_ones_end() {
    let s3 = s3_with(&["pipe-b"]).await;
    let b_settings = settings(&s3, "pipe-b", None);
    let data = Bytes::from(pattern(30 * MIB, 9));
    let dst = p("piped.bin");
    let plan = plan_parts(data.len() as u64, 5 * MIB as u64);
    assert_eq!(plan.len(), 6);
    let mp = S3Multipart::for_settings(&b_settings, &dst, &e2e::loopback_egress()).expect("target");
    let upload = mp.create().await.expect("create upload");
    let source = Arc::new(Paced {
        data: data.clone(),
        delivered: Arc::default(),
        streaming: Arc::default(),
        most_streaming: Arc::default(),
        opened: Default::default(),
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    copy_parts_via(
        source.clone(),
        &mp,
        &upload,
        plan.clone(),
        &opts(2, None),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("copy parts");
    let opened = source.opened.lock().expect("lock").clone();
    assert_eq!(opened.len(), 6, "{opened:?}");
    // Without pipelining, part k (k >= 2) starts only once one of the two before it is done:
    // at least k - 1 parts delivered by then.
    for (k, (offset, delivered)) in opened.iter().enumerate().skip(2) {
        assert!(
            *delivered + 1 < k,
            "part at {offset} (the {k}th opened) waited for {delivered} parts: {opened:?}"
        );
    }
    let most = source.most_streaming.load(Ordering::SeqCst);
    assert!((3..=4).contains(&most), "{most} parts read at once");
    let (bytes, done, retries) = tally(&drain(&mut rx));
    assert_eq!((bytes, retries), (data.len() as u64, 0));
    check_parts(&done, &plan, &data);
    mp.complete(&upload, &completion(&done))
        .await
        .expect("complete");
    let b = connect(ServiceConfig::S3(b_settings)).await;
    assert_eq!(sha256_hex(&read_all(&b, &dst).await), sha256_hex(&data));
}

/// Cancelling mid-copy returns promptly with an error; abort then removes the upload and
/// nothing appears at the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parts_copy_cancels_promptly() {
    let s3 = s3_with(&["cancel-a", "cancel-b"]).await;
    let a = connect(ServiceConfig::S3(settings(&s3, "cancel-a", None))).await;
    let b_settings = settings(&s3, "cancel-b", None);
    let b = connect(ServiceConfig::S3(b_settings.clone())).await;
    let data = pattern(20 * MIB, 4);
    let (src, dst) = (p("in.bin"), p("out.bin"));
    write_object(&a, &src, &data).await;
    let plan = plan_parts(data.len() as u64, 5 * MIB as u64);
    let mp = S3Multipart::for_settings(&b_settings, &dst, &e2e::loopback_egress()).expect("target");
    let upload = mp.create().await.expect("create upload");

    // At 4 MiB/s the copy would take 5 s; cancel once 2 MiB went out.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let watcher = async {
        let mut seen = 0;
        while let Some(ev) = rx.recv().await {
            if let CopyEvent::Bytes { len: n, .. } = ev {
                seen += n;
                if seen >= 2 * MIB as u64 {
                    cancel.cancel();
                    return Some(Instant::now());
                }
            }
        }
        None
    };
    let copy = async {
        let r = copy_parts(
            &a,
            &src,
            &mp,
            &upload,
            plan.clone(),
            &opts(2, Some(4 * MIB as u64)),
            tx,
            cancel.clone(),
        )
        .await;
        (r, Instant::now())
    };
    let (cancelled_at, (result, returned_at)) = tokio::join!(watcher, copy);
    let cancelled_at = cancelled_at.expect("the copy made progress before it ended");
    assert!(
        matches!(result, Err(StorageError::Interrupted(_))),
        "{result:?}"
    );
    let delay = returned_at.saturating_duration_since(cancelled_at);
    assert!(
        delay < Duration::from_millis(500),
        "returned {delay:?} after the cancel"
    );

    mp.abort(&upload).await.expect("abort");
    match mp.list_parts(&upload).await {
        Err(StorageError::NotFound) => {}
        Ok(parts) => assert!(parts.is_empty(), "parts left after abort: {parts:?}"),
        Err(e) => panic!("list after abort: {e:?}"),
    }
    assert!(matches!(b.stat(&dst).await, Err(StorageError::NotFound)));
}

/// The streaming fallback into a local directory, and its refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_copy_to_local_disk() {
    let s3 = s3_with(&["stream-a"]).await;
    let a = connect(ServiceConfig::S3(settings(&s3, "stream-a", None))).await;
    let dir = tempfile::tempdir().expect("tmp");
    let fs = connect(ServiceConfig::Fs(FsSettings {
        root: dir.path().to_string_lossy().into_owned(),
    }))
    .await;
    let data = pattern(9 * MIB + 321, 5);
    let src = p("in.bin");
    write_object(&a, &src, &data).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let copied = copy_stream(
        &a,
        &src,
        &fs,
        &p("copy.bin"),
        &opts(1, None),
        tx,
        CancellationToken::new(),
    )
    .await
    .expect("copy stream");
    assert_eq!(copied.size, data.len() as u64);
    assert_eq!(copied.sha256, sha256_hex(&data));
    let (bytes, done, retries) = tally(&drain(&mut rx));
    assert_eq!((bytes, done.len(), retries), (data.len() as u64, 0, 0));
    assert_eq!(
        sha256_hex(&read_all(&fs, &p("copy.bin")).await),
        sha256_hex(&data)
    );
    assert_eq!(
        sha256_hex(&std::fs::read(dir.path().join("copy.bin")).expect("file on disk")),
        sha256_hex(&data)
    );

    let (tx, _rx) = mpsc::unbounded_channel();
    let missing = copy_stream(
        &a,
        &p("missing.bin"),
        &fs,
        &p("never.bin"),
        &opts(1, None),
        tx,
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(missing, Err(StorageError::NotFound)),
        "{missing:?}"
    );

    // Cancelled mid-stream: an error, and nothing visible at the destination.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let watcher = async {
        while let Some(ev) = rx.recv().await {
            if matches!(ev, CopyEvent::Bytes { .. }) {
                cancel.cancel();
                break;
            }
        }
    };
    let (target, slow) = (p("cancelled.bin"), opts(1, Some(2 * MIB as u64)));
    let copy = copy_stream(&a, &src, &fs, &target, &slow, tx, cancel.clone());
    let ((), result) = tokio::join!(watcher, copy);
    assert!(
        matches!(result, Err(StorageError::Interrupted(_))),
        "{result:?}"
    );
    assert!(matches!(
        fs.stat(&p("cancelled.bin")).await,
        Err(StorageError::NotFound)
    ));
}

/// `upload_part` blames the server only for its own silence: a slow body is fine, a server that
/// stops reading fails the part as unavailable, and a failing body comes back as the
/// interruption it reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_uploads_time_out_on_silence_only() {
    let s3 = s3_with(&["silence"]).await;
    let target = settings(&s3, "silence", None);
    let io_timeout = Duration::from_millis(300);
    let mp =
        S3Multipart::with_io_timeout(&target, &p("slow.bin"), io_timeout, &e2e::loopback_egress())
            .expect("target");
    let upload = mp.create().await.expect("create upload");

    // Three pieces, 0.4 s apart: longer than the timeout, but the wait is the body's own.
    let slow = futures::stream::unfold(0u8, |i| async move {
        if i == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        Some((Ok(Bytes::from(vec![i; 1000])), i + 1))
    });
    let etag = mp
        .upload_part(&upload, 1, 3000, slow)
        .await
        .expect("slow body");
    assert_eq!(etag.len(), 32);

    let broken = futures::stream::iter([
        Ok(Bytes::from(vec![1u8; MIB])),
        Err(StorageError::Interrupted("the source broke off".into())),
    ]);
    let failed = mp.upload_part(&upload, 2, 2 * MIB as u64, broken).await;
    assert!(
        matches!(&failed, Err(StorageError::Interrupted(m)) if m == "the source broke off"),
        "{failed:?}"
    );
    mp.abort(&upload).await.expect("abort");

    // A server that accepts the connection and never reads: once the socket buffers are full
    // the body waits on the server, and the part fails soon after the timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let hold = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        // Keep the connection open, unread, until the test ends.
        std::future::pending::<()>().await;
        drop(socket);
    });
    let deaf = S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..target
    };
    let mp =
        S3Multipart::with_io_timeout(&deaf, &p("deaf.bin"), io_timeout, &e2e::loopback_egress())
            .expect("target");
    let block = Bytes::from(vec![0u8; MIB]);
    let big = futures::stream::iter((0..256).map(move |_| Ok(block.clone())));
    let started = Instant::now();
    let stalled = mp.upload_part("upload", 1, 256 * MIB as u64, big).await;
    assert!(
        matches!(&stalled, Err(StorageError::Unavailable(m)) if m.contains("silent")),
        "{stalled:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}
