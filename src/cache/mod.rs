//! Response cache: identical requests answered once.
//!
//! [`key`] says which requests are identical; [`store`] holds answers in process, bounded by
//! bytes and entries, and makes concurrent identical misses wait for one upstream call.
//! [`redis`] is an optional tier shared by replicas, behind the in-process one.

#[cfg(test)]
mod config_tests;
pub mod key;
pub mod redis;
pub mod store;

pub use key::{CacheKey, CacheScope, KeyError, is_deterministic, normalize};
pub use redis::{RedisStats, RedisTier};
pub use store::{CacheStats, CachedResponse, Follower, Leader, Lookup, ResponseCache};
