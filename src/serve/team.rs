//! Team budgets' counts: spent and reserved per team and window, behind an async seam a shared
//! store fills (`serve::fleet::FleetLedger`, Redis with the fleet). A reservation is checked
//! and taken in one step, so concurrent requests cannot overrun a budget together; settling
//! replaces it with what the request really cost. `MemoryLedger` is the in-process default.

use crate::decide::budget::{fits, NanoUsd};
use crate::decide::rate::Bucket;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// A team's window as a ledger sees it: what was spent, and what requests in flight reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    pub spent: NanoUsd,
    pub reserved: NanoUsd,
}

/// A reservation taken: how much, and where (a shared ledger's fallback takes some locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub amount: NanoUsd,
    pub local: bool,
}

/// Which of a team's rate limits a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKind {
    Requests = 0,
    Tokens = 1,
}

impl RateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
        }
    }
}

/// One of a team's rate buckets: whose, which, its limit per minute, and the time now (ms).
#[derive(Debug, Clone, Copy)]
pub struct Rate<'a> {
    pub team: &'a str,
    pub kind: RateKind,
    pub per_minute: u64,
    pub now_ms: i64,
}

/// One team's window in a ledger: `team` and the window's name (`day:2026-12-08`), and how long
/// the window has left (a store may forget it after).
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    pub team: &'a str,
    pub window: &'a str,
    pub ttl_s: u64,
}

#[async_trait]
pub trait TeamLedger: Send + Sync {
    /// Reserve `amount` if spent + reserved + amount stays within `budget`; else the standing
    /// that refused it.
    async fn reserve(
        &self,
        at: Account<'_>,
        budget: NanoUsd,
        amount: NanoUsd,
    ) -> Result<Hold, Standing>;
    /// Replace a reservation with what the request cost; where the window stands after (as
    /// far as this ledger knows without asking again).
    async fn settle(&self, at: Account<'_>, hold: Hold, cost: NanoUsd) -> Standing;
    /// Where the window stands now.
    async fn standing(&self, at: Account<'_>) -> Standing;
    /// Take `n` from a rate bucket: the bucket after, or the milliseconds until `n` would fit.
    async fn take(&self, rate: Rate<'_>, n: f64) -> Result<Bucket, u64>;
    /// Count `delta` more used (negative: give some back), without refusing.
    async fn adjust(&self, rate: Rate<'_>, delta: f64);
}

/// Counts in this process: a window's entry is dropped once a later window of the team is used.
#[derive(Default)]
pub struct MemoryLedger {
    windows: Mutex<HashMap<String, (String, Standing)>>,
    /// Each team's buckets, by `RateKind` as an index.
    buckets: Mutex<HashMap<String, [Option<Bucket>; 2]>>,
}

impl MemoryLedger {
    /// Take from (or, `force`, count against) a bucket of `per_minute` (the caller's share).
    pub fn take_now(
        &self,
        rate: Rate<'_>,
        per_minute: u64,
        n: f64,
        force: bool,
    ) -> Result<Bucket, u64> {
        let mut g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let slots = by_team(&mut g, rate.team, || [None; 2]);
        let b =
            slots[rate.kind as usize].get_or_insert_with(|| Bucket::full(per_minute, rate.now_ms));
        let next = if force {
            let now = b.now(per_minute, rate.now_ms);
            Bucket {
                level: now.level - n,
                ..now
            }
        } else {
            b.take(per_minute, n, rate.now_ms)?
        };
        *b = next;
        Ok(next)
    }

    fn with<R>(&self, at: Account<'_>, f: impl FnOnce(&mut Standing) -> R) -> R {
        let mut g = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let e = by_team(&mut g, at.team, || {
            (at.window.to_string(), Standing::default())
        });
        if e.0 != at.window {
            // A new window: the last one's counts are over.
            *e = (at.window.to_string(), Standing::default());
        }
        f(&mut e.1)
    }

    /// Reserve against `budget` (the caller's share of it); synchronous, for fallbacks.
    pub fn reserve_now(
        &self,
        at: Account<'_>,
        budget: NanoUsd,
        amount: NanoUsd,
    ) -> Result<Hold, Standing> {
        self.with(at, |s| {
            if fits(budget, s.spent, s.reserved, amount) {
                s.reserved += amount;
                Ok(Hold {
                    amount,
                    local: true,
                })
            } else {
                Err(*s)
            }
        })
    }

    pub fn settle_now(&self, at: Account<'_>, hold: Hold, cost: NanoUsd) -> Standing {
        self.with(at, |s| {
            s.reserved = (s.reserved - hold.amount).max(0);
            s.spent += cost;
            *s
        })
    }

    pub fn standing_now(&self, at: Account<'_>) -> Standing {
        self.with(at, |s| *s)
    }
}

/// A team's entry, looked up by `&str`: its key is built only for the team's first request.
fn by_team<'m, V>(
    map: &'m mut HashMap<String, V>,
    team: &str,
    new: impl FnOnce() -> V,
) -> &'m mut V {
    if !map.contains_key(team) {
        map.insert(team.to_string(), new());
    }
    map.get_mut(team)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

#[async_trait]
impl TeamLedger for MemoryLedger {
    async fn reserve(
        &self,
        at: Account<'_>,
        budget: NanoUsd,
        amount: NanoUsd,
    ) -> Result<Hold, Standing> {
        self.reserve_now(at, budget, amount)
    }

    async fn settle(&self, at: Account<'_>, hold: Hold, cost: NanoUsd) -> Standing {
        self.settle_now(at, hold, cost)
    }

    async fn standing(&self, at: Account<'_>) -> Standing {
        self.standing_now(at)
    }

    async fn take(&self, rate: Rate<'_>, n: f64) -> Result<Bucket, u64> {
        self.take_now(rate, rate.per_minute, n, false)
    }

    async fn adjust(&self, rate: Rate<'_>, delta: f64) {
        let _ = self.take_now(rate, rate.per_minute, delta, true);
    }
}
