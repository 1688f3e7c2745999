//! The spoke's provider budgets (`shared::budget`): drawn from the cluster's buckets through a
//! hub ([`crate::asks`]; spokes hold no Redis credentials). With no hub reachable the spoke
//! paces alone with the settings its hubs last handed it.

use shared::budget::{Budgets, Limit, SharedStore, Take};
use shared::proto::{SideAnswer, SideAsk};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// This process's budgets: every connector the spoke builds draws from them.
pub fn global() -> Budgets {
    static BUDGETS: OnceLock<Budgets> = OnceLock::new();
    BUDGETS
        .get_or_init(|| {
            let b = Budgets::default();
            b.set_shared(Arc::new(ThroughHub));
            b
        })
        .clone()
}

/// The cluster's buckets, through a connected hub.
struct ThroughHub;

impl SharedStore for ThroughHub {
    fn take<'a>(
        &'a self,
        key: &'a str,
        _limit: Limit,
        max_wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Take, String>> + Send + 'a>> {
        Box::pin(async move {
            let service = key.split(':').next().unwrap_or_default().to_owned();
            let ask = SideAsk::Take {
                service,
                key: key.to_owned(),
                max_wait_ms: max_wait.as_millis() as u64,
            };
            match crate::asks::hubs().ask(&ask).await? {
                SideAnswer::Take { take } => Ok(take),
                SideAnswer::Refused { message, .. } => Err(format!("the hub refused: {message}")),
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
            let ask = SideAsk::Cool {
                key: key.to_owned(),
                ms: cool_down.as_millis() as u64,
            };
            match crate::asks::hubs().ask(&ask).await? {
                SideAnswer::Cooled => Ok(()),
                SideAnswer::Refused { message, .. } => Err(format!("the hub refused: {message}")),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }

    fn name(&self) -> &'static str {
        "hub"
    }
}
