//! The expiry reaper: announces every lease that runs out, within a second of its end.
//!
//! Redis's own expired-key notifications are late and can be lost, so lockd keeps an
//! expiry index and every instance reaps it on a timer with one atomic script; the
//! script removes what it announces, so each expiry is announced exactly once however
//! many instances run (invariant 5).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Longest pause between two reaps: a lease that another instance shortens is still
/// announced well within a second.
const MAX_PAUSE: Duration = Duration::from_millis(250);
/// Most leases announced by one script call (per partition), so Redis is never blocked
/// for long.
const BATCH: usize = 200;

/// Runs until `shutdown` fires.
pub async fn run(store: Store, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        let reaped = store.reap(BATCH).await;
        if reaped.announced > 0 {
            tracing::debug!(announced = reaped.announced, "announced expired leases");
            crate::metrics::expired(reaped.announced);
        }
        match (&reaped.failure, failing) {
            (Some(error), false) => {
                tracing::warn!(%error, "expiry reaper cannot reach Redis");
                failing = true;
            }
            (None, true) => {
                tracing::info!("expiry reaper reaches Redis again");
                failing = false;
            }
            _ => {}
        }
        let pause = match reaped.next {
            Some(Duration::ZERO) => Duration::ZERO,
            Some(next) => next.clamp(Duration::from_millis(1), MAX_PAUSE),
            None => MAX_PAUSE,
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
