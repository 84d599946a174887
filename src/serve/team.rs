//! Team budgets' counts: spent and reserved per team and window, behind an async seam a shared
//! store fills (`serve::fleet::FleetLedger`, Redis with the fleet). A reservation is checked
//! and taken in one step, so concurrent requests cannot overrun a budget together; settling
//! replaces it with what the request really cost. `MemoryLedger` is the in-process default.

use crate::decide::budget::{fits, NanoUsd};
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
    /// Replace a reservation with what the request cost.
    async fn settle(&self, at: Account<'_>, hold: Hold, cost: NanoUsd);
    /// Where the window stands now.
    async fn standing(&self, at: Account<'_>) -> Standing;
}

/// Counts in this process: a window's entry is dropped once a later window of the team is used.
#[derive(Default)]
pub struct MemoryLedger {
    windows: Mutex<HashMap<String, (String, Standing)>>,
}

impl MemoryLedger {
    fn with<R>(&self, at: Account<'_>, f: impl FnOnce(&mut Standing) -> R) -> R {
        let mut g = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let e = g
            .entry(at.team.to_string())
            .or_insert_with(|| (at.window.to_string(), Standing::default()));
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

    pub fn settle_now(&self, at: Account<'_>, hold: Hold, cost: NanoUsd) {
        self.with(at, |s| {
            s.reserved = (s.reserved - hold.amount).max(0);
            s.spent += cost;
        });
    }

    pub fn standing_now(&self, at: Account<'_>) -> Standing {
        self.with(at, |s| *s)
    }
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

    async fn settle(&self, at: Account<'_>, hold: Hold, cost: NanoUsd) {
        self.settle_now(at, hold, cost)
    }

    async fn standing(&self, at: Account<'_>) -> Standing {
        self.standing_now(at)
    }
}
