//! Compact ids for the hot path, as newtypes so a provider index can never be passed where a
//! model index is meant. Each is an index into the `Config` it was built with; health, which
//! outlives a config, keys its state by names instead (provider name + endpoint URL, provider +
//! model ID).

use std::fmt;
use std::ops::Index;

/// A provider: index into `Config::providers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderId(pub usize);

/// A canonical model: index into the catalog's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(pub usize);

/// One offering of a model: index into that model's `offerings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OfferingIdx(pub usize);

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "provider#{}", self.0)
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "model#{}", self.0)
    }
}

/// Per-provider tables (`Config::providers`, health's provider list) are indexed by the id.
impl<T> Index<ProviderId> for [T] {
    type Output = T;
    fn index(&self, id: ProviderId) -> &T {
        &self[id.0]
    }
}

impl<T> Index<ProviderId> for Vec<T> {
    type Output = T;
    fn index(&self, id: ProviderId) -> &T {
        &self[id.0]
    }
}

/// Per-model tables (a route's policies) are indexed by the id.
impl<T> Index<ModelId> for Vec<T> {
    type Output = T;
    fn index(&self, id: ModelId) -> &T {
        &self[id.0]
    }
}

impl<T> Index<OfferingIdx> for Vec<T> {
    type Output = T;
    fn index(&self, id: OfferingIdx) -> &T {
        &self[id.0]
    }
}
