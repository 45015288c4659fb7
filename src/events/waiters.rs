//! Local waiters of busy locks, woken by `resource.unlocked` events.
//!
//! A waiter registers before it tries to acquire, so a release that lands between its
//! failed attempt and its sleep still wakes it (no lost wake-up). Entries live only while
//! someone waits on them, so the map's size is the number of resources being waited on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The registry of resources that local requests are waiting for. Cheap to clone.
#[derive(Clone, Default)]
pub struct Waiters {
    map: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Registrations alive now, across all resources.
    active: Arc<AtomicUsize>,
}

impl Waiters {
    /// Registers interest in `resource_id`, unless `limit` requests already wait; dropping
    /// the registration withdraws it.
    #[must_use]
    pub fn register(&self, resource_id: &str, limit: usize) -> Option<WaitRegistration> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if self.active.load(Ordering::Relaxed) >= limit {
            return None;
        }
        self.active.fetch_add(1, Ordering::Relaxed);
        crate::metrics::waiters(1.0);
        let notify = map.entry(resource_id.to_owned()).or_default().clone();
        Some(WaitRegistration {
            waiters: self.clone(),
            resource_id: resource_id.to_owned(),
            notify,
        })
    }

    /// How many requests wait now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Wakes every local waiter of `resource_id`.
    pub fn wake(&self, resource_id: &str) {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = map.get(resource_id) {
            notify.notify_waiters();
        }
    }

    /// Wakes every local waiter, after events may have been missed.
    pub fn wake_all(&self) {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        for notify in map.values() {
            notify.notify_waiters();
        }
    }

    /// How many resources have waiters now.
    #[must_use]
    pub fn resources_waited_on(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One request's interest in one resource.
pub struct WaitRegistration {
    waiters: Waiters,
    resource_id: String,
    notify: Arc<Notify>,
}

impl WaitRegistration {
    /// The notifier to await. Create and `enable` the `Notified` future before trying
    /// to acquire, then await it after the attempt fails.
    #[must_use]
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for WaitRegistration {
    fn drop(&mut self) {
        let mut map = self
            .waiters
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Clones are only made under this lock, so the count is exact: the map's
        // reference plus ours means we are the last waiter.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.resource_id);
        }
        self.waiters.active.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::waiters(-1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_between_attempt_and_sleep_is_not_lost() {
        let waiters = Waiters::default();
        let registration = waiters.register("r", 10).unwrap();
        let notified = registration.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // The release lands after the failed attempt but before the waiter sleeps.
        waiters.wake("r");
        tokio::time::timeout(std::time::Duration::from_secs(5), notified)
            .await
            .expect("the wake-up was kept");
    }

    #[test]
    fn entries_go_away_with_their_last_waiter() {
        let waiters = Waiters::default();
        let first = waiters.register("r", 2).unwrap();
        let second = waiters.register("r", 2).unwrap();
        assert!(waiters.register("other", 2).is_none(), "the limit holds");
        assert_eq!(waiters.resources_waited_on(), 1);
        assert_eq!(waiters.waiting(), 2);
        drop(first);
        assert_eq!(waiters.resources_waited_on(), 1);
        drop(second);
        assert_eq!(waiters.resources_waited_on(), 0);
        assert_eq!(waiters.waiting(), 0);
    }
}
