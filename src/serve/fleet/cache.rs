//! The prompt cache across the fleet: an entry kept by one replica is a hit on every other.
//! Entries are JSON under `{ns}:cache:<key>` (the key is already a hash of the client's scope,
//! the model, the route and the body: `decide::cache`), living their TTL plus their
//! stale-if-error window, at most `cache_max_bytes / 16` each. Every entry is also kept in this
//! replica's own cache, which serves while Redis is down; a miss in Redis is a miss.

use super::Fleet;
use crate::decide::cache::CacheKey;
use crate::serve::cache::{AnswerCache, Cached, MemoryCache};
use async_trait::async_trait;
use std::sync::Arc;

pub struct FleetCache {
    fleet: Arc<Fleet>,
    local: MemoryCache,
    max_entry_bytes: u64,
}

impl FleetCache {
    pub fn new(fleet: Arc<Fleet>, max_bytes: u64) -> FleetCache {
        FleetCache {
            fleet,
            local: MemoryCache::new(max_bytes),
            max_entry_bytes: (max_bytes / 16).max(1),
        }
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        self.fleet
            .key(&format!("cache:{}", hex::encode(&key.0[..16])))
    }
}

#[async_trait]
impl AnswerCache for FleetCache {
    async fn get(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        if !self.fleet.up() {
            return self.local.get(key).await;
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.redis_key(key));
        match self.fleet.call::<Option<Vec<u8>>>("cache", &cmd).await {
            Some(Some(json)) => serde_json::from_slice::<Cached>(&json).ok().map(Arc::new),
            Some(None) => None,
            None => self.local.get(key).await,
        }
    }

    async fn put(&self, key: CacheKey, entry: Arc<Cached>) {
        if u64::from(entry.weight) <= self.max_entry_bytes {
            if let Ok(json) = serde_json::to_vec(&*entry) {
                let life = entry.ttl + entry.stale_if_error;
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.redis_key(&key))
                    .arg(json)
                    .arg("PX")
                    .arg(life.as_millis().max(1) as u64);
                let _: Option<String> = self.fleet.call("cache", &cmd).await;
            }
        }
        self.local.put(key, entry).await;
    }

    fn usage(&self) -> (u64, u64) {
        self.local.usage()
    }
}
