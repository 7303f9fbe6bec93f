//! A bounded cache with expiry, stale retention, and shared in-flight
//! lookups ([`SingleFlight`], also used by the federation crate).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::OnceCell;

/// What a lookup found.
#[derive(Debug, Clone)]
pub(crate) enum Cached<V> {
    /// Within its lifetime.
    Fresh(V),
    /// Past its lifetime but kept for stale-on-error use.
    Stale(V),
    /// Nothing.
    Miss,
}

struct Slot<V> {
    value: V,
    expires: Instant,
    keep_until: Instant,
    generation: u64,
}

struct Inner<K, V> {
    map: HashMap<K, Slot<V>>,
    order: VecDeque<(K, u64)>,
    next_generation: u64,
}

/// Bounded by entry count; eviction drops the oldest inserted entry.
pub(crate) struct TtlCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    max_entries: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(max_entries: usize) -> Self {
        TtlCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_generation: 0,
            }),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get<Q>(&self, key: &Q, now: Instant) -> Cached<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = self.lock();
        match inner.map.get(key) {
            None => Cached::Miss,
            Some(s) if now < s.expires => Cached::Fresh(s.value.clone()),
            Some(s) if now < s.keep_until => Cached::Stale(s.value.clone()),
            Some(_) => Cached::Miss,
        }
    }

    /// Insert `value`, fresh until `expires`, kept for stale use until
    /// `keep_until`.
    pub(crate) fn insert(&self, key: K, value: V, expires: Instant, keep_until: Instant) {
        let mut inner = self.lock();
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let keep_until = keep_until.max(expires);
        inner.map.insert(
            key.clone(),
            Slot {
                value,
                expires,
                keep_until,
                generation,
            },
        );
        inner.order.push_back((key, generation));
        // Drop order records of replaced entries lazily, and evict.
        while inner.map.len() > self.max_entries || inner.order.len() > 2 * self.max_entries + 16 {
            let Some((k, g)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&k).is_some_and(|s| s.generation == g) {
                if inner.map.len() > self.max_entries {
                    inner.map.remove(&k);
                } else {
                    // Still live and within bounds: keep its order record.
                    inner.order.push_back((k, g));
                    if inner.order.len() <= 2 * self.max_entries + 16 {
                        break;
                    }
                }
            }
        }
    }

    /// Run `f` on the stored value of `key`, if any, leaving its expiry,
    /// retention and eviction order as they are.
    pub(crate) fn modify<Q>(&self, key: &Q, f: impl FnOnce(&mut V))
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(s) = self.lock().map.get_mut(key) {
            f(&mut s.value);
        }
    }

    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().map.remove(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

/// Concurrent callers for one key share one computation.
pub struct SingleFlight<K, V> {
    inflight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Nothing in flight.
    pub fn new() -> Self {
        SingleFlight {
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Run `f` for `key`, or wait for the run already in flight.
    pub async fn run<F, Fut>(&self, key: K, f: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone())
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let v = cell.get_or_init(f).await.clone();
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn fresh_stale_miss() {
        let c = TtlCache::new(10);
        let t0 = Instant::now();
        c.insert(
            "a",
            1,
            t0 + Duration::from_secs(10),
            t0 + Duration::from_secs(20),
        );
        assert!(matches!(c.get("a", t0), Cached::Fresh(1)));
        assert!(matches!(
            c.get("a", t0 + Duration::from_secs(15)),
            Cached::Stale(1)
        ));
        assert!(matches!(
            c.get("a", t0 + Duration::from_secs(25)),
            Cached::Miss
        ));
        assert!(matches!(c.get("b", t0), Cached::Miss));
    }

    #[test]
    fn bounded_by_entries_oldest_evicted() {
        let c = TtlCache::new(3);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(100);
        for i in 0..10 {
            c.insert(i, i, later, later);
        }
        assert_eq!(c.len(), 3);
        assert!(matches!(c.get(&9, t0), Cached::Fresh(9)));
        assert!(matches!(c.get(&0, t0), Cached::Miss));
        // Re-inserting the same key many times does not grow the order queue
        // without bound.
        for _ in 0..1000 {
            c.insert(9, 9, later, later);
        }
        assert!(c.lock().order.len() <= 2 * 3 + 16);
        assert_eq!(c.len(), 3);
    }

    #[tokio::test]
    async fn single_flight_shares_one_run() {
        let sf = Arc::new(SingleFlight::<&'static str, usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..20 {
            let sf = sf.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                sf.run("k", || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    7
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A later call runs again.
        let v = sf
            .run("k", || async { runs.fetch_add(1, Ordering::SeqCst) + 100 })
            .await;
        assert_eq!(v, 101);
    }
}
