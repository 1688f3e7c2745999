//! The QUIC accept loop and one task per spoke connection: enrollment on connections without
//! a client certificate, the control stream (hello, heartbeats, transfer reports) on
//! connections with one.

use crate::state::{now_ms, AppState};
use shared::proto::{
    self, check_preamble, encode, preamble, FrameDecoder, HubMsg, ProtoError, SpokeMsg, Welcome,
};
use std::time::Duration;
use tokio::sync::mpsc;

/// Batches of published-upload reports one spoke session holds for recording in order; past
/// this, a batch is recorded on its own.
const UPLOADED_BACKLOG: usize = 64;

/// How long a new connection may take to open its stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn accept_loop(state: AppState, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = handle(state, conn).await {
                        tracing::info!(%remote, error = %e, "spoke connection ended");
                    }
                }
                Err(e) => tracing::info!(%remote, error = %e, "spoke handshake failed"),
            }
        });
    }
}

/// A control stream: decoded frames in, encoded frames out.
pub(crate) struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

/// Errors of a control stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("stream closed")]
    Closed,
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("read: {0}")]
    ReadExact(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
}

impl Stream {
    /// Exchanges preambles (ours first, so a mismatched peer learns our version too).
    pub(crate) async fn open(
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<Stream, StreamError> {
        send.write_all(&preamble(proto::VERSION)).await?;
        let mut theirs = [0u8; proto::PREAMBLE_LEN];
        recv.read_exact(&mut theirs).await?;
        check_preamble(&theirs)?;
        Ok(Stream {
            send,
            recv,
            decoder: FrameDecoder::default(),
            buf: vec![0u8; 64 * 1024],
        })
    }

    pub(crate) async fn recv(&mut self) -> Result<SpokeMsg, StreamError> {
        loop {
            if let Some(m) = self.decoder.decode::<SpokeMsg>()? {
                return Ok(m);
            }
            match self.recv.read(&mut self.buf).await? {
                Some(n) => self.decoder.push(&self.buf[..n]),
                None => return Err(StreamError::Closed),
            }
        }
    }

    pub(crate) async fn send(&mut self, msg: &HubMsg) -> Result<(), StreamError> {
        self.send.write_all(&encode(msg)?).await?;
        Ok(())
    }
}

async fn handle(state: AppState, conn: quinn::Connection) -> anyhow::Result<()> {
    let leaf = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| {
            certs.first().map(|c| {
                (
                    shared::pki::fingerprint(c),
                    super::cert_not_after_ms(c.as_ref()),
                )
            })
        });
    let (send, recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| anyhow::anyhow!("no control stream within {HELLO_TIMEOUT:?}"))??;
    let mut stream = match tokio::time::timeout(HELLO_TIMEOUT, Stream::open(send, recv)).await {
        Ok(Ok(s)) => s,
        Ok(Err(StreamError::Proto(e @ ProtoError::VersionMismatch { .. }))) => {
            let reason = format!("{e}");
            tracing::warn!(remote = %conn.remote_address(), "{reason}");
            conn.close(
                quinn::VarInt::from_u32(proto::CLOSE_VERSION_MISMATCH),
                reason.as_bytes(),
            );
            return Ok(());
        }
        Ok(Err(e)) => {
            conn.close(
                quinn::VarInt::from_u32(proto::CLOSE_PROTOCOL),
                b"bad preamble",
            );
            return Err(e.into());
        }
        Err(_) => anyhow::bail!("no preamble within {HELLO_TIMEOUT:?}"),
    };
    match leaf {
        None => enroll(state, conn, stream).await,
        Some((fp, not_after)) => {
            let first = tokio::time::timeout(HELLO_TIMEOUT, stream.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no hello within {HELLO_TIMEOUT:?}"));
            let hello = match first {
                Ok(Ok(SpokeMsg::Hello(h))) => h,
                Ok(Ok(other)) => {
                    refuse_and_close(&conn, &mut stream, "protocol", "expected a hello first")
                        .await;
                    anyhow::bail!("first message was not a hello: {other:?}");
                }
                Ok(Err(e)) => {
                    conn.close(
                        quinn::VarInt::from_u32(proto::CLOSE_PROTOCOL),
                        e.to_string().as_bytes(),
                    );
                    return Err(e.into());
                }
                Err(e) => return Err(e),
            };
            control(state, conn, stream, fp, not_after, hello).await
        }
    }
}

async fn refuse_and_close(
    conn: &quinn::Connection,
    stream: &mut Stream,
    code: &str,
    message: &str,
) {
    let _ = stream
        .send(&HubMsg::Refused {
            code: code.to_owned(),
            message: message.to_owned(),
        })
        .await;
    let _ = stream.send.finish();
    // Give the frame a moment to leave before the close overtakes it.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.send.stopped()).await;
    let close = if code == "revoked" {
        proto::CLOSE_REVOKED
    } else {
        proto::CLOSE_PROTOCOL
    };
    conn.close(quinn::VarInt::from_u32(close), message.as_bytes());
}

async fn enroll(
    state: AppState,
    conn: quinn::Connection,
    mut stream: Stream,
) -> anyhow::Result<()> {
    let req = match tokio::time::timeout(HELLO_TIMEOUT, stream.recv()).await {
        Ok(Ok(SpokeMsg::Enroll(r))) => r,
        Ok(Ok(_)) => {
            refuse_and_close(
                &conn,
                &mut stream,
                "no_certificate",
                "this connection has no client certificate: only enrollment is allowed",
            )
            .await;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => anyhow::bail!("no enrollment request within {HELLO_TIMEOUT:?}"),
    };
    let source = conn.remote_address().ip();
    let throttle = &state.network.enroll_throttle;
    if throttle.blocked(source) {
        refuse_and_close(
            &conn,
            &mut stream,
            "throttled",
            "too many failed enrollments from this address; wait a minute",
        )
        .await;
        return Ok(());
    }
    match super::enroll::enroll(&state, &req).await {
        Ok(done) => {
            stream.send(&HubMsg::Enrolled(Box::new(done))).await?;
            let _ = stream.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.send.stopped()).await;
            conn.close(quinn::VarInt::from_u32(proto::CLOSE_NORMAL), b"enrolled");
        }
        Err(r) => {
            // One line per attempt at DEBUG only: failures are what a guessing flood makes.
            tracing::debug!(code = r.code, %source, "enrollment refused");
            if r.code != "internal" && throttle.failed(source) {
                tracing::warn!(%source, "repeated failed enrollments; refusing this source for a minute");
            }
            refuse_and_close(&conn, &mut stream, r.code, &r.message).await;
        }
    }
    Ok(())
}

async fn control(
    state: AppState,
    conn: quinn::Connection,
    mut stream: Stream,
    fingerprint: String,
    cert_not_after_ms: Option<i64>,
    hello: proto::Hello,
) -> anyhow::Result<()> {
    let spoke = match state.db.spoke_by_fingerprint(&fingerprint).await? {
        Some(s) if s.revoked_ms.is_none() && s.id == hello.spoke_id => s,
        Some(s) if s.revoked_ms.is_some() => {
            refuse_and_close(&conn, &mut stream, "revoked", "this spoke has been revoked").await;
            anyhow::bail!("revoked spoke {} refused", s.id);
        }
        _ => {
            refuse_and_close(
                &conn,
                &mut stream,
                "revoked",
                "this certificate belongs to no enrolled spoke",
            )
            .await;
            anyhow::bail!("unknown spoke certificate refused");
        }
    };
    stream
        .send(&HubMsg::Welcome(Welcome {
            hub_region: state.config.region.clone(),
            settings: super::enroll::spoke_settings(&state),
            data_key: Some(shared::proto::Redacted({
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(state.spoke_data_key(spoke.id))
            })),
        }))
        .await?;
    // Every revoked certificate, before anything else: the spoke refuses those peers on its
    // relay from now on (the hub pushes the list again whenever it grows).
    stream
        .send(&HubMsg::Revoked {
            fingerprints: state.db.revoked_fingerprints().await?,
        })
        .await?;
    // Budget questions and part reports arrive on streams of their own, answered while the
    // connection lives.
    tokio::spawn(super::asks::serve(state.clone(), conn.clone(), spoke.id));
    let (tx, mut rx) = mpsc::unbounded_channel::<HubMsg>();
    let session = state.network.registry.insert(
        spoke.id,
        spoke.advertise.clone(),
        &spoke.region,
        // A spoke's own count of slots is a claim: the hub never counts on more than it
        // told its spokes to run (`offload.max_jobs_per_spoke`).
        hello
            .slots
            .clamp(1, state.config.offload.max_jobs_per_spoke.max(1)),
        conn.clone(),
        tx,
    );
    state
        .network
        .registry
        .set_declared(spoke.id, &hello.fs_roots, hello.url_sources);
    let _ = state.db.touch_spoke(spoke.id, now_ms()).await;
    // The expiry of the certificate it holds, for the console (a spoke enrolled before the
    // hub recorded expiries gets it now).
    if let Some(na) = cert_not_after_ms.filter(|na| spoke.cert_not_after_ms != Some(*na)) {
        if let Err(e) = state.db.set_spoke_cert_not_after(spoke.id, na).await {
            tracing::warn!(spoke_id = spoke.id, error = %e, "could not record the spoke certificate's expiry");
        }
    }
    tracing::info!(spoke_id = spoke.id, name = %spoke.name, region = %spoke.region,
                   remote = %conn.remote_address(), "spoke connected");
    crate::transfers::spoke_ready(&state, spoke.id, &hello.running);
    // The spoke's reports of published uploads, recorded off the control loop (each is a
    // database transaction) by one task per session, in the order the spoke sent them: the
    // feed shows an upload and its overwrite in the order they happened. Dropping the sender
    // at the end of the session lets it finish what it holds.
    let (uploaded_tx, mut uploaded_rx) =
        mpsc::channel::<Vec<shared::proto::UploadDone>>(UPLOADED_BACKLOG);
    {
        let state = state.clone();
        let spoke_id = spoke.id;
        tokio::spawn(async move {
            while let Some(batch) = uploaded_rx.recv().await {
                crate::events::record_direct_uploads(&state, spoke_id, batch).await;
            }
        });
    }
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                msg = stream.recv() => match msg {
                    Ok(SpokeMsg::Heartbeat(mut hb)) => {
                        crate::claims::touch_spoke_uploads(&state, spoke.id, &hb.uploads).await;
                        let uploaded = std::mem::take(&mut hb.uploaded);
                        if !uploaded.is_empty() {
                            if let Err(e) = uploaded_tx.try_send(uploaded) {
                                // A database slower than the spoke: record this batch on its
                                // own rather than stall the control loop (order may suffer).
                                let uploaded = match e {
                                    mpsc::error::TrySendError::Full(b)
                                    | mpsc::error::TrySendError::Closed(b) => b,
                                };
                                let state = state.clone();
                                let spoke_id = spoke.id;
                                tokio::spawn(async move {
                                    crate::events::record_direct_uploads(&state, spoke_id, uploaded)
                                        .await;
                                });
                            }
                        }
                        if state.network.registry.heartbeat(spoke.id, hb) {
                            // A transfer may be waiting for exactly this measurement.
                            state.transfers.kick();
                        }
                    }
                    Ok(SpokeMsg::Hello(_)) | Ok(SpokeMsg::Enroll(_)) => {
                        anyhow::bail!("unexpected hello/enroll on an open control stream");
                    }
                    Ok(other) => crate::transfers::on_report(&state, spoke.id, other).await,
                    Err(StreamError::Proto(e)) => {
                        conn.close(quinn::VarInt::from_u32(proto::CLOSE_PROTOCOL), e.to_string().as_bytes());
                        anyhow::bail!("protocol error: {e}");
                    }
                    Err(e) => return Err(e.into()),
                },
                out = rx.recv() => match out {
                    Some(m) => stream.send(&m).await?,
                    None => return Ok(()),
                },
                reason = conn.closed() => {
                    return Err(anyhow::anyhow!("connection closed: {reason}"));
                }
            }
        }
    }
    .await;
    if state.network.registry.remove(spoke.id, session) {
        tracing::info!(spoke_id = spoke.id, "spoke disconnected");
        crate::transfers::spoke_lost(&state, spoke.id).await;
    }
    result
}
