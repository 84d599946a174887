//! Teams: who a client token belongs to, which models it may use, and what it may spend and
//! send per window. Resolved at load; the counting is `serve::team`'s, the arithmetic
//! `decide::budget`'s.

use crate::model::ids::ModelId;
use crate::model::policy::Policy;
use crate::model::provider::Secret;

/// A team's place in `Config::teams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TeamId(pub usize);

/// A UTC calendar window a budget is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub usd: f64,
    pub per: Window,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug)]
pub struct Team {
    pub name: String,
    /// The client tokens that name this team (never logged, never sent upstream).
    pub tokens: Vec<Secret>,
    /// Canonical models the team may use (`None`: any).
    pub models: Option<Vec<ModelId>>,
    pub budget: Option<Budget>,
    pub limits: Limits,
    /// The team's policy layer over each model's policy, by model (`None`: none).
    pub policies: Option<Vec<Policy>>,
}

impl Team {
    /// Whether the team may use `model`.
    pub fn allows(&self, model: ModelId) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(&model))
    }
}
