//! The in-process cache tier, on `moka`, and single-flight of identical misses.
//!
//! Bounds: total bytes (a weigher), entry count, the size of one entry, and a lifetime per
//! entry. moka bounds only one weight, so an entry weighs at least `max_bytes / max_entries`:
//! the weight bound then also caps the count, and small entries cannot crowd the cache with
//! their bookkeeping.
//!
//! Single-flight: the first miss of a key leads (it calls upstream and streams to its own
//! client as usual); identical requests arriving meanwhile follow, waiting for the leader's
//! [`Leader::complete`] and then replaying its answer. A leader that cannot produce a
//! cacheable answer abandons (explicitly or by being dropped), and its followers look up
//! again: one of them leads next.

use super::key::CacheKey;
use super::redis::RedisTier;
use crate::api::{ApiFormat, Endpoint};
use crate::config::CacheSettings;
use crate::money::NanoUsd;
use crate::usage::Usage;
use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Bytes an entry costs beyond its body and strings: the struct, the key, moka's node.
const ENTRY_OVERHEAD: u64 = 256;

/// What a hit needs to replay an answer and to record what it saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    pub status: u16,
    /// The whole (non-streamed) response body, JSON: a streamed answer is stored in the form
    /// it would have had unstreamed, and streamed again on replay when the client asks. The
    /// original response's headers describe that exchange (dates, request ids, rate limits)
    /// and are not kept.
    pub body: Bytes,
    pub format: ApiFormat,
    pub endpoint: Endpoint,
    /// The model that answered, as the provider named it.
    pub model: String,
    /// Usage of the original call: what a hit saves.
    pub usage: Usage,
    /// Cost of the original call; `None` when its model had no price.
    pub cost: Option<NanoUsd>,
}

impl CachedResponse {
    /// Bytes the entry holds in memory, as the byte bound counts them.
    pub fn size(&self) -> u64 {
        (self.body.len() + self.model.len()) as u64 + ENTRY_OVERHEAD
    }
}

/// Counters for metrics, updated as the cache works. `entries` and `bytes` are gauges; the
/// rest only grow.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    /// Entries removed to keep the bounds, or expired.
    pub evictions: AtomicU64,
    /// Lookups answered from the cache, followers served by their leader included.
    pub hits: AtomicU64,
    /// Lookups that went upstream (leaders).
    pub misses: AtomicU64,
    /// Lookups that waited for a leader already in flight.
    pub coalesced: AtomicU64,
    /// Answers not stored for exceeding `max_entry_bytes`.
    pub too_large: AtomicU64,
}

impl CacheStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(counter: &AtomicU64, n: u64) {
        // Saturating: a gauge never wraps below zero.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// An entry as stored: the answer and how long it lives.
#[derive(Clone)]
struct Slot {
    response: Arc<CachedResponse>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<CacheKey, Slot> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }

    // A replaced entry lives as long as its new value says.
    fn expire_after_update(
        &self,
        _: &CacheKey,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// A flight in progress: its followers hold receivers of this channel.
type Flight = watch::Sender<Option<Arc<CachedResponse>>>;

/// The response cache: the in-process tier, the optional shared tier, and flights.
pub struct ResponseCache {
    cache: Cache<CacheKey, Slot>,
    flights: Mutex<HashMap<CacheKey, Arc<Flight>>>,
    redis: Option<RedisTier>,
    max_entry_bytes: u64,
    max_bytes: u64,
    default_ttl: Duration,
    stats: Arc<CacheStats>,
}

/// The outcome of [`ResponseCache::get_or_join`].
pub enum Lookup {
    Hit(Arc<CachedResponse>),
    /// Call upstream, then [`Leader::complete`] or [`Leader::abandon`].
    Leader(Leader),
    /// Wait with [`Follower::wait`].
    Follower(Follower),
}

impl ResponseCache {
    pub fn new(settings: &CacheSettings) -> ResponseCache {
        let stats = Arc::new(CacheStats::default());
        let min_weight = (settings.max_bytes / settings.max_entries.max(1)).max(1);
        let listener_stats = stats.clone();
        let cache = Cache::builder()
            .max_capacity(settings.max_bytes)
            // An answer is stored because it was just asked for: admit it (LRU) rather than
            // let a frequency sketch turn it away, so the next identical request hits.
            .eviction_policy(EvictionPolicy::lru())
            .weigher(move |_, slot: &Slot| {
                u32::try_from(slot.response.size().max(min_weight)).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, slot: Slot, cause| {
                let s = &listener_stats;
                CacheStats::sub(&s.entries, 1);
                CacheStats::sub(&s.bytes, slot.response.size());
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    CacheStats::add(&s.evictions, 1);
                }
            })
            .build();
        ResponseCache {
            cache,
            flights: Mutex::new(HashMap::new()),
            redis: settings.redis.as_ref().map(RedisTier::new),
            max_entry_bytes: settings.max_entry_bytes,
            max_bytes: settings.max_bytes,
            default_ttl: settings.ttl,
            stats,
        }
    }

    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    /// The shared tier, when one is configured.
    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }

    /// The largest answer stored, in bytes.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    /// Lifetime of entries whose rule sets none.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// An answer held for `key`, without joining or starting a flight (and without counting
    /// a hit or miss).
    pub async fn peek(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.cache.get(key).await.map(|s| s.response)
    }

    /// Looks `key` up: a hit, or the lead of a new flight, or a place behind the one in
    /// flight. A hit of the shared tier is copied into this one.
    pub async fn get_or_join(self: &Arc<Self>, key: CacheKey) -> Lookup {
        if let Some(hit) = self.cache.get(&key).await {
            CacheStats::add(&self.stats.hits, 1);
            return Lookup::Hit(hit.response);
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = flights.get(&key) {
                CacheStats::add(&self.stats.coalesced, 1);
                return Lookup::Follower(Follower {
                    rx: f.subscribe(),
                    stats: self.stats.clone(),
                });
            }
            let f = Arc::new(watch::channel(None).0);
            flights.insert(key, f.clone());
            f
        };
        let leader = Leader {
            cache: self.clone(),
            key,
            flight: Some(flight),
        };
        // A leader that finished between our miss and our claim stored its answer first.
        if let Some(slot) = self.cache.get(&key).await {
            CacheStats::add(&self.stats.hits, 1);
            leader.finish(Some(slot.response.clone()), None).await;
            return Lookup::Hit(slot.response);
        }
        // The shared tier's answer is kept here for the time it has left there.
        if let Some(redis) = &self.redis
            && let Some((hit, ttl)) = redis.get(&key).await
        {
            CacheStats::add(&self.stats.hits, 1);
            let hit = Arc::new(hit);
            leader
                .finish(Some(hit.clone()), Some(Store::Local(ttl)))
                .await;
            return Lookup::Hit(hit);
        }
        CacheStats::add(&self.stats.misses, 1);
        Lookup::Leader(leader)
    }

    /// Stores an answer; refused (false) when larger than `max_entry_bytes`.
    pub async fn insert(
        &self,
        key: CacheKey,
        response: Arc<CachedResponse>,
        ttl: Duration,
    ) -> bool {
        let size = response.size();
        if size > self.max_entry_bytes {
            CacheStats::add(&self.stats.too_large, 1);
            return false;
        }
        CacheStats::add(&self.stats.entries, 1);
        CacheStats::add(&self.stats.bytes, size);
        self.cache.insert(key, Slot { response, ttl }).await;
        // moka evicts in batches; over the bound, evict now so the bound holds between
        // inserts, not only eventually.
        if CacheStats::get(&self.stats.bytes) > self.max_bytes {
            self.cache.run_pending_tasks().await;
        }
        true
    }

    /// Runs moka's pending evictions and expiries (tests and metrics read settled counts).
    pub async fn settle(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Entries held, as moka counts them (after [`settle`](Self::settle)).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn end_flight(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // Only our own flight: after an abandon a new leader may have claimed the key.
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }
}

/// Where a flight's answer is stored, and for how long.
#[derive(Clone, Copy)]
enum Store {
    /// In process only: it came from the shared tier.
    Local(Duration),
    Everywhere(Duration),
}

/// The one request of a flight that goes upstream.
pub struct Leader {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    flight: Option<Arc<Flight>>,
}

impl Leader {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Hands a clean, complete answer to the followers and stores it for `ttl` (the
    /// cache's default when `None`), in both tiers. Returns whether it was stored: an
    /// answer over `max_entry_bytes` still serves the followers but is not kept.
    pub async fn complete(self, response: CachedResponse, ttl: Option<Duration>) -> bool {
        let ttl = ttl.unwrap_or(self.cache.default_ttl);
        self.finish(Some(Arc::new(response)), Some(Store::Everywhere(ttl)))
            .await
    }

    /// Gives up the flight: no cacheable answer (an error, a truncated stream, no usage).
    /// Followers look up again, and one of them leads.
    pub fn abandon(mut self) {
        self.end(None);
    }

    async fn finish(mut self, response: Option<Arc<CachedResponse>>, store: Option<Store>) -> bool {
        let mut stored = false;
        if let (Some(r), Some(store)) = (&response, store) {
            let (Store::Local(ttl) | Store::Everywhere(ttl)) = store;
            // Stored before the flight ends, so a lookup after it finds the answer.
            stored = self.cache.insert(self.key, r.clone(), ttl).await;
            if stored
                && matches!(store, Store::Everywhere(_))
                && let Some(redis) = &self.cache.redis
            {
                redis.set_in_background(self.key, r.clone(), ttl);
            }
        }
        self.end(response);
        stored
    }

    fn end(&mut self, response: Option<Arc<CachedResponse>>) {
        if let Some(flight) = self.flight.take() {
            self.cache.end_flight(&self.key, &flight);
            if let Some(r) = response {
                flight.send_replace(Some(r));
            }
            // Dropping the last sender tells followers still waiting that no answer comes.
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// A request waiting for the leader of its flight.
pub struct Follower {
    rx: watch::Receiver<Option<Arc<CachedResponse>>>,
    stats: Arc<CacheStats>,
}

impl Follower {
    /// The leader's answer, or `None` when it abandoned: then look up again. Bound the wait
    /// with a timeout of the caller's choice; a leader ends (and so releases its followers)
    /// when its own request does.
    pub async fn wait(mut self) -> Option<Arc<CachedResponse>> {
        let answer = self
            .rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        if answer.is_some() {
            CacheStats::add(&self.stats.hits, 1);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: u64, max_entries: u64, max_entry_bytes: u64) -> CacheSettings {
        CacheSettings {
            max_bytes,
            max_entries,
            max_entry_bytes,
            ttl: Duration::from_secs(3600),
            redis: None,
        }
    }

    fn key(i: u64) -> CacheKey {
        let body = format!(r#"{{"i":{i}}}"#);
        CacheKey::new("/v1/chat/completions", "p", "m", "global", body.as_bytes()).unwrap()
    }

    fn answer(body_len: usize, marker: u8) -> CachedResponse {
        CachedResponse {
            status: 200,
            body: Bytes::from(vec![marker; body_len]),
            format: ApiFormat::OpenAi,
            endpoint: Endpoint::ChatCompletions,
            model: "gpt-4o-mini-2024-07-18".into(),
            usage: Usage {
                input_tokens: 12,
                output_tokens: 34,
                ..Usage::default()
            },
            cost: Some(NanoUsd(296_000)),
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        CacheStats::get(c)
    }

    #[tokio::test]
    async fn the_byte_bound_holds_under_a_flood_of_large_entries() {
        const MAX: u64 = 1024 * 1024;
        let cache = Arc::new(ResponseCache::new(&settings(MAX, 10_000, 64 * 1024)));
        let s = cache.stats().clone();
        for i in 0..300 {
            assert!(
                cache
                    .insert(key(i), Arc::new(answer(60_000, 1)), Duration::from_secs(60))
                    .await
            );
            assert!(
                get(&s.bytes) <= MAX,
                "after insert {i}: {} bytes held",
                get(&s.bytes)
            );
        }
        cache.settle().await;
        assert!(get(&s.evictions) >= 280, "evictions {}", get(&s.evictions));
        assert_eq!(get(&s.entries), cache.entry_count());
        // 60 KB entries in 1 MiB: at most 17 fit; the counters match what is held.
        assert!(cache.entry_count() <= MAX / 60_000);
        assert_eq!(
            get(&s.bytes),
            cache.entry_count() * answer(60_000, 1).size()
        );
        // LRU: the newest answer is the one kept.
        assert!(cache.peek(&key(299)).await.is_some());
        assert!(cache.peek(&key(0)).await.is_none());
    }

    #[tokio::test]
    async fn the_entry_count_bound_holds_for_small_entries() {
        let cache = Arc::new(ResponseCache::new(&settings(1024 * 1024, 10, 64 * 1024)));
        for i in 0..100 {
            cache
                .insert(key(i), Arc::new(answer(10, 1)), Duration::from_secs(60))
                .await;
        }
        cache.settle().await;
        assert!(cache.entry_count() <= 10, "{} entries", cache.entry_count());
        assert_eq!(get(&cache.stats().entries), cache.entry_count());
    }

    #[tokio::test]
    async fn an_entry_over_the_size_limit_is_refused() {
        let cache = Arc::new(ResponseCache::new(&settings(1024 * 1024, 100, 4096)));
        let big = answer(4096, 1);
        assert!(big.size() > 4096);
        assert!(
            !cache
                .insert(key(1), Arc::new(big), Duration::from_secs(60))
                .await
        );
        assert!(cache.peek(&key(1)).await.is_none());
        assert_eq!(get(&cache.stats().too_large), 1);
        assert_eq!(get(&cache.stats().bytes), 0);
        assert!(
            cache
                .insert(key(2), Arc::new(answer(1000, 1)), Duration::from_secs(60))
                .await
        );
        assert!(cache.peek(&key(2)).await.is_some());
    }

    #[tokio::test]
    async fn entries_expire_after_their_own_ttl() {
        let cache = Arc::new(ResponseCache::new(&settings(1024 * 1024, 100, 64 * 1024)));
        cache
            .insert(key(1), Arc::new(answer(10, 1)), Duration::from_millis(300))
            .await;
        cache
            .insert(key(2), Arc::new(answer(10, 2)), Duration::from_secs(60))
            .await;
        assert!(cache.peek(&key(1)).await.is_some());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(cache.peek(&key(1)).await.is_none(), "expired");
        assert_eq!(cache.peek(&key(2)).await.unwrap().body[0], 2);
        // moka's timer wheel removes expired entries (and tells the counters) on its next
        // tick, about a second apart.
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&cache.stats().entries) != 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cache.settle().await;
        }
        assert_eq!(get(&cache.stats().entries), 1);
        assert_eq!(get(&cache.stats().evictions), 1);
    }

    /// Starts `n` concurrent lookups of one key; returns the leader (if any) and the
    /// followers, each a task resolving to what its follower got.
    async fn race(
        cache: &Arc<ResponseCache>,
        k: CacheKey,
        n: usize,
    ) -> (Vec<Leader>, Vec<Follower>, usize) {
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache.get_or_join(k).await
                })
            })
            .collect();
        let (mut leaders, mut followers, mut hits) = (Vec::new(), Vec::new(), 0);
        for t in tasks {
            match t.await.unwrap() {
                Lookup::Leader(l) => leaders.push(l),
                Lookup::Follower(f) => followers.push(f),
                Lookup::Hit(_) => hits += 1,
            }
        }
        (leaders, followers, hits)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_concurrent_misses_make_one_leader_and_followers_get_its_answer() {
        let cache = Arc::new(ResponseCache::new(&settings(1024 * 1024, 100, 64 * 1024)));
        let (mut leaders, followers, hits) = race(&cache, key(7), 50).await;
        assert_eq!((leaders.len(), followers.len(), hits), (1, 49, 0));
        let waiting: Vec<_> = followers
            .into_iter()
            .map(|f| tokio::spawn(f.wait()))
            .collect();
        let leader = leaders.pop().unwrap();
        assert!(leader.complete(answer(100, 9), None).await);
        for w in waiting {
            assert_eq!(*w.await.unwrap().unwrap(), answer(100, 9));
        }
        let s = cache.stats();
        assert_eq!(
            (get(&s.misses), get(&s.coalesced), get(&s.hits)),
            (1, 49, 49)
        );
        // Later lookups hit the stored answer.
        assert!(matches!(cache.get_or_join(key(7)).await, Lookup::Hit(r) if r.body[0] == 9));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_abandoned_flight_lets_one_follower_lead() {
        let cache = Arc::new(ResponseCache::new(&settings(1024 * 1024, 100, 64 * 1024)));
        let k = key(8);
        let (mut leaders, followers, _) = race(&cache, k, 50).await;
        assert_eq!(leaders.len(), 1);
        let waiting: Vec<_> = followers
            .into_iter()
            .map(|f| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    match f.wait().await {
                        Some(r) => Lookup::Hit(r),
                        None => cache.get_or_join(k).await,
                    }
                })
            })
            .collect();
        leaders.pop().unwrap().abandon();
        let (mut next, mut followers) = (Vec::new(), Vec::new());
        for w in waiting {
            match w.await.unwrap() {
                Lookup::Leader(l) => next.push(l),
                Lookup::Follower(f) => followers.push(f),
                Lookup::Hit(_) => panic!("nothing was stored"),
            }
        }
        assert_eq!((next.len(), followers.len()), (1, 48));
        // This time the leader is dropped mid-request; the follower after it completes.
        drop(next.pop());
        let mut retried = Vec::new();
        for f in followers {
            assert!(f.wait().await.is_none());
            retried.push(cache.get_or_join(k).await);
        }
        let Lookup::Leader(third) = retried.remove(0) else {
            panic!("the first to look again leads")
        };
        assert!(retried.iter().all(|l| matches!(l, Lookup::Follower(_))));
        third.complete(answer(10, 3), None).await;
        for l in retried {
            let Lookup::Follower(f) = l else {
                unreachable!()
            };
            assert_eq!(f.wait().await.unwrap().body[0], 3);
        }
        assert_eq!(get(&cache.stats().misses), 3);
    }

    #[tokio::test]
    async fn an_answer_too_large_to_keep_still_serves_the_followers() {
        let cache = Arc::new(ResponseCache::new(&settings(1024 * 1024, 100, 1024)));
        let Lookup::Leader(leader) = cache.get_or_join(key(1)).await else {
            panic!()
        };
        let Lookup::Follower(f) = cache.get_or_join(key(1)).await else {
            panic!()
        };
        assert!(!leader.complete(answer(4096, 5), None).await);
        assert_eq!(f.wait().await.unwrap().body.len(), 4096);
        assert!(matches!(cache.get_or_join(key(1)).await, Lookup::Leader(_)));
    }
}
