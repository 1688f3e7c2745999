//! The hubs this spoke can ask questions of beside the control stream
//! (`shared::proto::SideAsk`, one bidirectional stream per question on a live control
//! connection, nearest hub first): provider budget slots ([`crate::budget`]) and the recording
//! of upload-session parts the data endpoint wrote ([`crate::data`]). Every hub of the
//! network shares one database and one budget store, so any connected hub answers.

use shared::proto::{self, SideAnswer, SideAsk};
use std::sync::{Mutex, OnceLock};

/// The process's hub links.
pub fn hubs() -> &'static HubLinks {
    static HUBS: OnceLock<HubLinks> = OnceLock::new();
    HUBS.get_or_init(HubLinks::default)
}

/// Live hub connections, by the session that owns each.
#[derive(Default)]
pub struct HubLinks {
    conns: Mutex<Vec<(u64, quinn::Connection)>>,
}

/// A session's connection among those questions may take; out again when dropped.
pub struct Link(u64);

impl Drop for Link {
    fn drop(&mut self) {
        lock(&hubs().conns).retain(|(i, _)| *i != self.0);
    }
}

impl HubLinks {
    /// A session's connection joins until the returned link is dropped.
    pub fn add(&self, conn: quinn::Connection) -> Link {
        let id = rand::random();
        lock(&self.conns).push((id, conn));
        Link(id)
    }

    fn pick(&self) -> Option<quinn::Connection> {
        let mut conns = lock(&self.conns);
        conns.retain(|(_, c)| c.close_reason().is_none());
        // The closest hub answers fastest.
        conns
            .iter()
            .min_by_key(|(_, c)| c.rtt())
            .map(|(_, c)| c.clone())
    }

    /// Asks a connected hub; an error when none is connected or the stream fails.
    pub async fn ask(&self, ask: &SideAsk) -> Result<SideAnswer, String> {
        let conn = self.pick().ok_or("no hub is connected")?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = proto::encode(ask).map_err(|e| e.to_string())?;
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        proto::read_frame(&mut recv, proto::MAX_SIDE_FRAME)
            .await
            .map_err(|e| e.to_string())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
