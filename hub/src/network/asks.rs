//! Questions a spoke asks its hub on bidirectional streams of their own, beside the control
//! stream (`shared::proto::SideAsk`): one question per stream, one answer, then the stream is
//! finished. Provider budget slots and cool-downs go to `crate::budgets`; reports of
//! upload-session parts a spoke wrote for a part grant go to `crate::sessions`.

use crate::state::AppState;
use shared::proto::{self, SideAnswer, SideAsk};
use std::time::Duration;

/// The longest a question may take to arrive (a budget answer itself is immediate: the spoke
/// sleeps for its slot, not the hub).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long recording a part may take (a database write and, for a part sent again, the
/// deletion of the one it replaces).
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);

/// Answers the streams a spoke opens on its control connection until the connection closes.
pub async fn serve(state: AppState, conn: quinn::Connection, spoke_id: i64) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(&state, send, recv, spoke_id).await {
                tracing::debug!(spoke_id, error = %e, "side stream failed");
            }
        });
    }
}

async fn answer(
    state: &AppState,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    spoke_id: i64,
) -> Result<(), String> {
    let ask: SideAsk = tokio::time::timeout(
        ASK_TIMEOUT,
        proto::read_frame(&mut recv, proto::MAX_SIDE_FRAME),
    )
    .await
    .map_err(|_| "the question did not arrive in time".to_owned())?
    .map_err(|e| e.to_string())?;
    let answer = match ask {
        SideAsk::Part(report) => {
            match tokio::time::timeout(
                RECORD_TIMEOUT,
                crate::sessions::record_spoke_part(state, &report),
            )
            .await
            {
                Ok(Ok(session)) => SideAnswer::Recorded { session },
                Ok(Err(e)) => {
                    let status = e.status().as_u16();
                    tracing::info!(
                        spoke_id,
                        account = report.account,
                        session = report.part.session,
                        status,
                        "a spoke's session part was not recorded"
                    );
                    SideAnswer::Refused {
                        message: e.message().to_owned(),
                        status: Some(status),
                        code: Some(e.code().to_owned()),
                    }
                }
                Err(_) => SideAnswer::Refused {
                    message: "recording the part took too long".into(),
                    status: Some(503),
                    code: Some("service_unavailable".into()),
                },
            }
        }
        ask => crate::budgets::answer(state, ask).await,
    };
    let frame = proto::encode(&answer).map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    Ok(())
}
