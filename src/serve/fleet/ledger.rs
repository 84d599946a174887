//! Team budgets across the fleet: one Redis hash per team and window (`spent`, `reserved`, in
//! nano-dollars), reserved and settled by Lua scripts, so three replicas enforce one budget,
//! not three. Redis down: each replica reserves against its share (`budget /
//! shared_state.replicas`) in its own ledger, and what it spent there is added to the shared
//! count once Redis answers again.

use super::Fleet;
use crate::decide::budget::NanoUsd;
use crate::decide::rate::Bucket;
use crate::serve::team::{Account, Hold, MemoryLedger, Rate, Standing, TeamLedger};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Reserve ARGV[2] if spent + reserved + it <= ARGV[1]; keep the hash ARGV[3] s. Returns
/// {ok, spent, reserved}.
const RESERVE: &str = r"
local s = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local r = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local a = tonumber(ARGV[2])
if s + r + a > tonumber(ARGV[1]) then return {0, s, r} end
redis.call('HINCRBY', KEYS[1], 'reserved', a)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, s, r + a}
";

/// Release ARGV[1] reserved, add ARGV[2] spent. Returns {spent, reserved} after.
const SETTLE: &str = r"
local r = redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
local s = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {s, r}
";

/// A team's rate bucket (`decide::rate::Bucket`, the same arithmetic): refill to now, then take
/// ARGV[2] (ARGV[4] = 1: count it even past empty). Returns {taken, level, at or wait ms}.
const TAKE: &str = r"
local pm = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or ARGV[1])
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or ARGV[3])
local rate = pm / 60000
if now > at then
  level = math.min(level + (now - at) * rate, pm)
  at = now
end
if ARGV[4] ~= '1' and level < n then
  return {0, tostring(level), math.ceil((math.min(n, pm) - level) / rate)}
end
level = level - n
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', at)
redis.call('PEXPIRE', KEYS[1], 120000)
return {1, tostring(level), at}
";

pub struct FleetLedger {
    fleet: Arc<Fleet>,
    local: MemoryLedger,
    replicas: i64,
    /// Spent here while Redis was down, by (team, window): added to the shared count later.
    unshared: Mutex<HashMap<(String, String), (NanoUsd, u64)>>,
}

impl FleetLedger {
    pub fn new(fleet: Arc<Fleet>, replicas: u32) -> FleetLedger {
        FleetLedger {
            fleet,
            local: MemoryLedger::default(),
            replicas: i64::from(replicas.max(1)),
            unshared: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, at: Account<'_>) -> String {
        self.fleet.key(&format!("budget:{}:{}", at.team, at.window))
    }

    /// Add what was spent locally during an outage to the shared counts.
    async fn share_local_spend(&self) {
        let pending: Vec<_> = {
            let mut g = self.unshared.lock().unwrap_or_else(|p| p.into_inner());
            g.drain().collect()
        };
        for ((team, window), (spent, ttl_s)) in pending {
            let at = Account {
                team: &team,
                window: &window,
                ttl_s,
            };
            if self.settle_shared(at, 0, spent).await.is_none() {
                let mut g = self.unshared.lock().unwrap_or_else(|p| p.into_inner());
                g.entry((team.clone(), window.clone()))
                    .or_insert((0, ttl_s))
                    .0 += spent;
            }
        }
    }

    /// The shared bucket's answer (`None`: Redis did not answer).
    async fn take_shared(
        &self,
        rate: Rate<'_>,
        n: f64,
        force: bool,
    ) -> Option<Result<Bucket, u64>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE)
            .arg(1)
            .arg(
                self.fleet
                    .key(&format!("rate:{}:{}", rate.team, rate.kind.as_str())),
            )
            .arg(rate.per_minute)
            .arg(n.to_string())
            .arg(rate.now_ms)
            .arg(if force { "1" } else { "0" });
        let (taken, level, third): (i64, String, i64) = self.fleet.call("rate", &cmd).await?;
        let level: f64 = level.parse().unwrap_or(0.0);
        Some(if taken == 1 {
            Ok(Bucket {
                level,
                at_ms: third,
            })
        } else {
            Err(third.max(1) as u64)
        })
    }

    async fn settle_shared(
        &self,
        at: Account<'_>,
        reserved: NanoUsd,
        spent: NanoUsd,
    ) -> Option<Standing> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SETTLE)
            .arg(1)
            .arg(self.key(at))
            .arg(reserved)
            .arg(spent)
            .arg(at.ttl_s.max(1));
        let (spent, reserved): (i64, i64) = self.fleet.call("budget", &cmd).await?;
        Some(Standing { spent, reserved })
    }
}

#[async_trait]
impl TeamLedger for FleetLedger {
    async fn reserve(
        &self,
        at: Account<'_>,
        budget: NanoUsd,
        amount: NanoUsd,
    ) -> Result<Hold, Standing> {
        if self.fleet.up()
            && !self
                .unshared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            self.share_local_spend().await;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RESERVE)
            .arg(1)
            .arg(self.key(at))
            .arg(budget)
            .arg(amount)
            .arg(at.ttl_s.max(1));
        match self.fleet.call::<(i64, i64, i64)>("budget", &cmd).await {
            Some((1, _, _)) => Ok(Hold {
                amount,
                local: false,
            }),
            Some((_, spent, reserved)) => Err(Standing { spent, reserved }),
            // Redis cannot answer: this replica's share, counted here.
            None => self.local.reserve_now(at, budget / self.replicas, amount),
        }
    }

    async fn settle(&self, at: Account<'_>, hold: Hold, cost: NanoUsd) -> Standing {
        let shared = if hold.local {
            None
        } else {
            self.settle_shared(at, hold.amount, cost).await
        };
        if let Some(s) = shared {
            return s;
        }
        // Settled here (a local reservation), or Redis did not answer (the shared reservation
        // stays until the window's key expires): the cost is added to the shared count later.
        let standing = if hold.local {
            self.local.settle_now(at, hold, cost)
        } else {
            self.local.standing_now(at)
        };
        let mut g = self.unshared.lock().unwrap_or_else(|p| p.into_inner());
        g.entry((at.team.to_string(), at.window.to_string()))
            .or_insert((0, at.ttl_s))
            .0 += cost;
        standing
    }

    async fn take(&self, rate: Rate<'_>, n: f64) -> Result<Bucket, u64> {
        match self.take_shared(rate, n, false).await {
            Some(r) => r,
            // Redis cannot answer: this replica's share, counted here.
            None => self.local.take_now(
                rate,
                (rate.per_minute / self.replicas as u64).max(1),
                n,
                false,
            ),
        }
    }

    async fn adjust(&self, rate: Rate<'_>, delta: f64) {
        if self.take_shared(rate, delta, true).await.is_none() {
            let share = (rate.per_minute / self.replicas as u64).max(1);
            let _ = self.local.take_now(rate, share, delta, true);
        }
    }

    async fn standing(&self, at: Account<'_>) -> Standing {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(at)).arg("spent").arg("reserved");
        match self
            .fleet
            .call::<(Option<i64>, Option<i64>)>("budget", &cmd)
            .await
        {
            Some((s, r)) => Standing {
                spent: s.unwrap_or(0),
                reserved: r.unwrap_or(0),
            },
            None => self.local.standing_now(at),
        }
    }
}
