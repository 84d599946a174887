//! The client-facing API surface: which paths twinroute serves, which wire format each belongs
//! to, and which provider kinds can serve it.

use crate::model::ApiKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

/// The error JSON shape a client of an endpoint expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    OpenAi,
    Anthropic,
}

/// Which events a stream is made of: chat completion chunks (ended by `data: [DONE]`), Messages
/// events (ended by `message_stop`), or the Responses API's typed events (ended by
/// `response.completed`, `.incomplete` or `.failed`, with no `[DONE]`). Each says differently
/// where the answer's content is and how it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Chat,
    Messages,
    Responses,
}

impl Dialect {
    /// The stream an answer on `endpoint` is, from a speaker of `family`'s wire format.
    pub fn of(endpoint: Endpoint, family: Family) -> Dialect {
        match (family, endpoint) {
            (Family::Anthropic, _) => Dialect::Messages,
            (Family::OpenAi, Endpoint::Responses) => Dialect::Responses,
            (Family::OpenAi, _) => Dialect::Chat,
        }
    }

    /// The error shape that goes with it.
    pub fn family(self) -> Family {
        match self {
            Dialect::Chat | Dialect::Responses => Family::OpenAi,
            Dialect::Messages => Family::Anthropic,
        }
    }
}

/// Chat completions for OpenAI's family, Messages for Anthropic's: the dialect of every route
/// but Responses.
impl From<Family> for Dialect {
    fn from(f: Family) -> Dialect {
        match f {
            Family::OpenAi => Dialect::Chat,
            Family::Anthropic => Dialect::Messages,
        }
    }
}

/// The wire family of what a provider kind answers: its error bodies and its stream events
/// (Bedrock's event-stream frames carry Anthropic events; Vertex's rawPredict speaks Anthropic).
pub fn answer_family(api: ApiKind) -> Family {
    match api {
        ApiKind::OpenAi | ApiKind::Azure | ApiKind::VertexOpenAi => Family::OpenAi,
        ApiKind::Anthropic | ApiKind::Bedrock | ApiKind::Vertex => Family::Anthropic,
    }
}

impl Endpoint {
    /// The stream a client of this route reads (its own family's).
    pub fn dialect(self) -> Dialect {
        Dialect::of(self, self.family())
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/responses" => Some(Endpoint::Responses),
            "/v1/messages" => Some(Endpoint::Messages),
            _ => None,
        }
    }

    /// The path below the API root (`/v1`), as appended to a provider's base URL.
    pub fn subpath(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Messages => "/messages",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Endpoint::Messages => Family::Anthropic,
            _ => Family::OpenAi,
        }
    }

    /// Whether a client of this endpoint can be served by a provider of this kind only through
    /// translation (`wire::translate`): chat completions ↔ Messages.
    pub fn translated_to(self, api: ApiKind) -> bool {
        matches!(
            (self, api),
            (
                Endpoint::ChatCompletions,
                ApiKind::Anthropic | ApiKind::Bedrock | ApiKind::Vertex
            ) | (
                Endpoint::Messages,
                ApiKind::OpenAi | ApiKind::Azure | ApiKind::VertexOpenAi
            )
        )
    }

    /// Whether the provider's body must be built from the parsed client body rather than
    /// spliced: translation, or a provider that wraps the same format in its own envelope
    /// (Bedrock's Messages body has no `model` and its own `anthropic_version`).
    pub fn rebuilt_for(self, api: ApiKind) -> bool {
        self.translated_to(api)
            || matches!(
                (self, api),
                (Endpoint::Messages, ApiKind::Bedrock | ApiKind::Vertex)
            )
    }

    /// Whether a provider of this kind can serve this endpoint at all.
    pub fn reachable_by(self, api: ApiKind) -> bool {
        self.served_by(api) || self.rebuilt_for(api)
    }

    /// Whether a provider of this kind speaks this endpoint's wire format as it is (the body
    /// is spliced, never parsed).
    pub fn served_by(self, api: ApiKind) -> bool {
        match (self, api) {
            (_, ApiKind::Bedrock | ApiKind::Vertex) => false,
            // Vertex's OpenAI-compatible surface has chat completions only.
            (Endpoint::ChatCompletions, ApiKind::VertexOpenAi) => true,
            (_, ApiKind::VertexOpenAi) => false,
            (Endpoint::Messages, ApiKind::Anthropic) => true,
            (Endpoint::Messages, _) | (_, ApiKind::Anthropic) => false,
            (_, ApiKind::OpenAi) => true,
            // Azure's classic deployments API has no Responses route.
            (Endpoint::Responses, ApiKind::Azure) => false,
            (_, ApiKind::Azure) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_compatibility() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/messages/"),
            Some(Endpoint::Messages)
        );
        assert_eq!(Endpoint::from_path("/v1/models"), None);
        assert_eq!(Endpoint::from_path("/v2/chat/completions"), None);
        assert!(Endpoint::ChatCompletions.served_by(ApiKind::OpenAi));
        assert!(Endpoint::ChatCompletions.served_by(ApiKind::Azure));
        assert!(!Endpoint::ChatCompletions.served_by(ApiKind::Anthropic));
        assert!(Endpoint::Messages.served_by(ApiKind::Anthropic));
        assert!(!Endpoint::Messages.served_by(ApiKind::OpenAi));
        assert!(!Endpoint::Responses.served_by(ApiKind::Azure));
    }
}
