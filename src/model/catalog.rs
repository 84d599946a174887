//! The model-equivalence map: canonical models, their offerings on providers, and the index that
//! resolves whatever name a client sends (canonical name, alias, or any provider-specific model ID)
//! to one canonical model. Pure data; ordering the offerings is `route`'s job.

use crate::model::ids::{ModelId, OfferingIdx, ProviderId};
use crate::model::{ConfigError, Policy};
use std::collections::HashMap;

/// A request feature an offering can declare it lacks (a host without vision or tool calling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    Images,
    Tools,
}

impl Feature {
    pub fn parse(s: &str) -> Option<Feature> {
        match s {
            "images" => Some(Feature::Images),
            "tools" => Some(Feature::Tools),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Images => "images",
            Feature::Tools => "tools",
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    /// One number to compare offerings by: 3 parts input to 1 part output, the usual blend for
    /// chat traffic (prompts are longer than answers).
    pub fn blended(&self) -> f64 {
        (3.0 * self.input_per_mtok + self.output_per_mtok) / 4.0
    }

    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// The same model served by one provider under that provider's model ID.
#[derive(Debug, Clone)]
pub struct Offering {
    pub provider: ProviderId,
    pub model_id: String,
    pub price: Option<Price>,
    pub weight: f64,
    /// This provider's window when it differs from the model's (hosts often serve less).
    pub context_tokens: Option<u64>,
    /// Top-level request parameters removed before sending to this offering.
    pub drop_params: Vec<String>,
    /// Parameters this offering ignores or rejects; only `x-twinroute-require-parameters` reads it.
    pub unsupported_params: Vec<String>,
    /// Request features it cannot honour (`images`, `tools`): requests using one skip it.
    pub lacks: Vec<Feature>,
    /// Accepts assistant prefill (`None`: the wire format's default for the model ID).
    pub prefill: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Equivalent {
    pub model: String,
    /// `model` resolved by `Catalog::new`.
    pub id: ModelId,
    pub grade: f64,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub aliases: Vec<String>,
    pub context_tokens: Option<u64>,
    pub offerings: Vec<Offering>,
    pub equivalents: Vec<Equivalent>,
    pub policy: Policy,
}

#[derive(Debug)]
pub struct Catalog {
    models: Vec<Model>,
    index: HashMap<String, ModelId>,
}

impl Catalog {
    pub fn new(mut models: Vec<Model>) -> Result<Catalog, ConfigError> {
        let mut index: HashMap<String, ModelId> = HashMap::new();
        // Names and aliases first: they must be unique and they win over offering IDs.
        for (i, m) in models.iter().enumerate() {
            for (j, name) in std::iter::once(&m.name).chain(m.aliases.iter()).enumerate() {
                if let Some(&other) = index.get(name) {
                    let path = if j == 0 {
                        format!("models[{i}].name")
                    } else {
                        format!("models[{i}].aliases[{}]", j - 1)
                    };
                    return Err(ConfigError {
                        path,
                        reason: format!("{name:?} already names model {:?}", models[other.0].name),
                    });
                }
                index.insert(name.clone(), ModelId(i));
            }
        }
        let names_and_aliases = index.clone();
        for (i, m) in models.iter().enumerate() {
            for (j, o) in m.offerings.iter().enumerate() {
                match index.get(&o.model_id) {
                    Some(&other) if other != ModelId(i) => {
                        // A canonical name or alias of another model shadows the ID: fine, the
                        // operator chose it. Two offering IDs claiming two models is ambiguous.
                        if !names_and_aliases.contains_key(&o.model_id) {
                            return Err(ConfigError {
                                path: format!("models[{i}].offerings[{j}].model"),
                                reason: format!(
                                    "{:?} is also an offering of model {:?}; a client sending it \
                                     would be ambiguous",
                                    o.model_id, models[other.0].name
                                ),
                            });
                        }
                    }
                    Some(_) => {}
                    None => {
                        index.insert(o.model_id.clone(), ModelId(i));
                    }
                }
            }
        }
        for (i, m) in models.iter_mut().enumerate() {
            for (j, e) in m.equivalents.iter_mut().enumerate() {
                match names_and_aliases.get(&e.model) {
                    None => {
                        return Err(ConfigError {
                            path: format!("models[{i}].equivalents[{j}].model"),
                            reason: format!("unknown model {:?}", e.model),
                        })
                    }
                    Some(&k) if k == ModelId(i) => {
                        return Err(ConfigError {
                            path: format!("models[{i}].equivalents[{j}].model"),
                            reason: "a model cannot be its own equivalent".into(),
                        })
                    }
                    Some(&k) => e.id = k,
                }
            }
        }
        Ok(Catalog { models, index })
    }

    /// Resolve what a client sent in `model` to a canonical model.
    pub fn resolve(&self, requested: &str) -> Option<ModelId> {
        self.index.get(requested).copied()
    }

    /// Every model's id, in order.
    pub fn ids(&self) -> impl Iterator<Item = ModelId> {
        (0..self.models.len()).map(ModelId)
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn model(&self, id: ModelId) -> &Model {
        &self.models[id.0]
    }

    /// Every model with its id.
    pub fn iter(&self) -> impl Iterator<Item = (ModelId, &Model)> {
        self.models.iter().enumerate().map(|(i, m)| (ModelId(i), m))
    }

    /// The offering an id names.
    pub fn offering(&self, model: ModelId, offering: OfferingIdx) -> &Offering {
        &self.models[model.0].offerings[offering.0]
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// The context window of one offering: its own, else its model's.
    pub fn context_tokens(&self, model: ModelId, offering: OfferingIdx) -> Option<u64> {
        let m = &self.models[model.0];
        m.offerings[offering.0].context_tokens.or(m.context_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, aliases: &[&str], ids: &[(usize, &str)]) -> Model {
        Model {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            context_tokens: None,
            offerings: ids
                .iter()
                .map(|(p, id)| Offering {
                    provider: ProviderId(*p),
                    model_id: id.to_string(),
                    price: None,
                    weight: 1.0,
                    context_tokens: None,
                    drop_params: vec![],
                    unsupported_params: vec![],
                    lacks: vec![],
                    prefill: None,
                })
                .collect(),
            equivalents: vec![],
            policy: Policy::default(),
        }
    }

    #[test]
    fn resolves_name_alias_and_offering_id() {
        let c = Catalog::new(vec![
            model(
                "llama-3.3-70b",
                &["llama3.3-70b"],
                &[
                    (0, "meta-llama/Llama-3.3-70B"),
                    (1, "llama-3.3-70b-versatile"),
                ],
            ),
            model(
                "gpt-oss-120b",
                &[],
                &[(0, "openai/gpt-oss-120b"), (1, "gpt-oss-120b")],
            ),
        ])
        .unwrap();
        assert_eq!(c.resolve("llama-3.3-70b"), Some(ModelId(0)));
        assert_eq!(c.resolve("llama3.3-70b"), Some(ModelId(0)));
        assert_eq!(c.resolve("meta-llama/Llama-3.3-70B"), Some(ModelId(0)));
        assert_eq!(c.resolve("llama-3.3-70b-versatile"), Some(ModelId(0)));
        // The canonical name of model 1 equals an offering ID of it: no conflict.
        assert_eq!(c.resolve("gpt-oss-120b"), Some(ModelId(1)));
        assert_eq!(c.resolve("openai/gpt-oss-120b"), Some(ModelId(1)));
        assert_eq!(c.resolve("nope"), None);
        assert_eq!(c.resolve("LLAMA-3.3-70B"), None);
    }

    #[test]
    fn duplicate_alias_is_rejected() {
        let e = Catalog::new(vec![
            model("a", &["x"], &[(0, "a1")]),
            model("b", &["x"], &[(0, "b1")]),
        ])
        .unwrap_err();
        assert_eq!(e.path, "models[1].aliases[0]");
    }

    #[test]
    fn ambiguous_offering_id_is_rejected() {
        let e = Catalog::new(vec![
            model("a", &[], &[(0, "shared")]),
            model("b", &[], &[(1, "shared")]),
        ])
        .unwrap_err();
        assert_eq!(e.path, "models[1].offerings[0].model");
    }

    #[test]
    fn unknown_equivalent_is_rejected() {
        let mut m = model("a", &[], &[(0, "a1")]);
        m.equivalents.push(Equivalent {
            model: "ghost".into(),
            id: ModelId(0),
            grade: 0.9,
        });
        let e = Catalog::new(vec![m]).unwrap_err();
        assert_eq!(e.path, "models[0].equivalents[0].model");
    }

    #[test]
    fn blended_price() {
        let p = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 5.0,
        };
        assert!((p.blended() - 2.0).abs() < 1e-9);
        assert!((p.cost_usd(1_000_000, 100_000) - 1.5).abs() < 1e-9);
    }
}
