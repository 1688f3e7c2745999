//! The spoke's provider budgets (`shared::budget`): drawn from the cluster's buckets through a
//! hub, one bidirectional stream per question on a live control connection (spokes hold no
//! Redis credentials). With no hub reachable the spoke paces alone with the settings its hubs
//! last handed it.

use shared::budget::{Budgets, Limit, SharedStore, Take};
use shared::proto::{self, BudgetAnswer, BudgetAsk};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// This process's budgets: every connector the spoke builds draws from them.
pub fn global() -> Budgets {
    static BUDGETS: OnceLock<Budgets> = OnceLock::new();
    BUDGETS
        .get_or_init(|| {
            let b = Budgets::default();
            b.set_shared(hubs().clone());
            b
        })
        .clone()
}

/// The control connections budget questions may go over.
pub fn hubs() -> &'static Arc<HubStore> {
    static HUBS: OnceLock<Arc<HubStore>> = OnceLock::new();
    HUBS.get_or_init(|| Arc::new(HubStore::default()))
}

/// Live hub connections, by the session that owns each.
#[derive(Default)]
pub struct HubStore {
    conns: Mutex<Vec<(u64, quinn::Connection)>>,
}

impl HubStore {
    /// A session's connection joins; the returned number takes it out again.
    pub fn add(&self, conn: quinn::Connection) -> u64 {
        let id = rand::random();
        lock(&self.conns).push((id, conn));
        id
    }

    pub fn remove(&self, id: u64) {
        lock(&self.conns).retain(|(i, _)| *i != id);
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

    async fn ask(&self, ask: &BudgetAsk) -> Result<BudgetAnswer, String> {
        let conn = self.pick().ok_or("no hub is connected")?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = proto::encode(ask).map_err(|e| e.to_string())?;
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        proto::read_frame(&mut recv, proto::MAX_BUDGET_FRAME)
            .await
            .map_err(|e| e.to_string())
    }
}

impl SharedStore for HubStore {
    fn take<'a>(
        &'a self,
        key: &'a str,
        _limit: Limit,
        max_wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Take, String>> + Send + 'a>> {
        Box::pin(async move {
            let service = key.split(':').next().unwrap_or_default().to_owned();
            let ask = BudgetAsk::Take {
                service,
                key: key.to_owned(),
                max_wait_ms: max_wait.as_millis() as u64,
            };
            match self.ask(&ask).await? {
                BudgetAnswer::Take { take } => Ok(take),
                BudgetAnswer::Refused { message } => Err(format!("the hub refused: {message}")),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }

    fn cool<'a>(
        &'a self,
        key: &'a str,
        cool_down: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let ask = BudgetAsk::Cool {
                key: key.to_owned(),
                ms: cool_down.as_millis() as u64,
            };
            match self.ask(&ask).await? {
                BudgetAnswer::Cooled => Ok(()),
                BudgetAnswer::Refused { message } => Err(format!("the hub refused: {message}")),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }

    fn name(&self) -> &'static str {
        "hub"
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
