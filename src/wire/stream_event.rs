//! What one upstream stream event means to the relay: whether it is content (the commit point
//! of a stream), the end, an error, or only preamble (`message_start`, a role-only chunk, a
//! ping); and, for a stream that may have to be continued elsewhere, the text it carries and
//! whether it is inside a tool call or a thinking block.
//!
//! Pure: events in, a classification out. The upstream's stream family decides the shapes:
//! OpenAI `chat.completion.chunk`s (OpenAI, Azure, Vertex's OpenAI surface) or Anthropic
//! Messages events (Anthropic, Vertex rawPredict, Bedrock once its frames are decoded).

use crate::model::endpoint::{Dialect, Family};
use crate::wire::sse_frame::{event_end_at, EventTooLarge, SseFramer};
use crate::wire::translate::stream::{SseEvent, SseParser};
use serde_json::Value;

/// What an upstream event is, for the commit point and stream recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Nothing the user sees yet: `message_start`, a role-only chunk, a ping, a block start.
    Preamble,
    /// A delta the user sees: text, a tool-call fragment, thinking. `text` is the visible text
    /// it adds (empty for tool calls and thinking); `inside` says what kind of block it is in.
    Content { text: String, inside: Block },
    /// The stream said it is done (`[DONE]`, `message_stop`, a finish reason, `message_delta`).
    End,
    /// The provider reported an error inside the stream (an error chunk or `event: error`).
    Error,
    /// The data is not JSON (and not `[DONE]`): nothing a client SDK could parse.
    Malformed,
}

/// The kind of block a content delta belongs to: only plain text can be continued by prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Text,
    ToolCall,
    Thinking,
}

/// Classify one event of an upstream stream of this dialect.
pub fn classify(stream: impl Into<Dialect>, ev: &SseEvent) -> EventKind {
    let stream = stream.into();
    let data = ev.data.trim();
    if stream == Dialect::Chat && data == "[DONE]" {
        return EventKind::End;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return EventKind::Malformed;
    };
    if stream == Dialect::Responses {
        let kind = ev
            .event
            .as_deref()
            .or_else(|| v.get("type").and_then(Value::as_str))
            .unwrap_or("");
        return classify_responses(kind, &v);
    }
    classify_value(stream.family(), ev.event.as_deref(), &v)
}

/// The Responses API's typed events: content is a text, refusal, function-arguments or
/// reasoning delta; `response.completed` and `response.incomplete` end it; `response.failed`
/// and `error` are the provider's own end of a broken stream.
fn classify_responses(kind: &str, v: &Value) -> EventKind {
    match kind {
        "response.output_text.delta" | "response.refusal.delta" => EventKind::Content {
            text: non_empty_str(v.get("delta")).unwrap_or("").to_string(),
            inside: Block::Text,
        },
        "response.function_call_arguments.delta" => EventKind::Content {
            text: String::new(),
            inside: Block::ToolCall,
        },
        k if k.starts_with("response.reasoning") && k.ends_with(".delta") => EventKind::Content {
            text: String::new(),
            inside: Block::Thinking,
        },
        "response.completed" | "response.incomplete" => EventKind::End,
        "response.failed" | "error" => EventKind::Error,
        _ => EventKind::Preamble,
    }
}

/// Classify an event whose data is already parsed (`name`: its `event:` field).
fn classify_value(family: Family, name: Option<&str>, v: &Value) -> EventKind {
    match family {
        Family::OpenAi => classify_openai(v),
        Family::Anthropic => {
            let kind = name
                .or_else(|| v.get("type").and_then(Value::as_str))
                .unwrap_or("");
            classify_anthropic(kind, v)
        }
    }
}

/// The `event:` name and the joined `data:` of one raw event (without its blank line).
fn fields(raw: &[u8]) -> (&[u8], Option<std::borrow::Cow<'_, [u8]>>) {
    let mut name: &[u8] = b"";
    let mut data: Option<std::borrow::Cow<'_, [u8]>> = None;
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"event:") {
            name = v.strip_prefix(b" ").unwrap_or(v);
        } else if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            data = Some(match data {
                None => std::borrow::Cow::Borrowed(v),
                Some(prev) => {
                    let mut joined = prev.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(v);
                    std::borrow::Cow::Owned(joined)
                }
            });
        }
    }
    (name, data)
}

fn non_empty_str(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn classify_openai(v: &Value) -> EventKind {
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return EventKind::Error;
    }
    let mut ended = false;
    for choice in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let delta = choice.get("delta");
        if let Some(text) = non_empty_str(delta.and_then(|d| d.get("content"))) {
            return EventKind::Content {
                text: text.to_string(),
                inside: Block::Text,
            };
        }
        if delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return EventKind::Content {
                text: String::new(),
                inside: Block::ToolCall,
            };
        }
        if non_empty_str(delta.and_then(|d| d.get("reasoning_content")))
            .or_else(|| non_empty_str(delta.and_then(|d| d.get("reasoning"))))
            .is_some()
        {
            return EventKind::Content {
                text: String::new(),
                inside: Block::Thinking,
            };
        }
        if non_empty_str(delta.and_then(|d| d.get("refusal"))).is_some() {
            return EventKind::Content {
                text: String::new(),
                inside: Block::Text,
            };
        }
        ended |= choice.get("finish_reason").is_some_and(|f| !f.is_null());
    }
    if ended {
        EventKind::End
    } else {
        EventKind::Preamble
    }
}

fn classify_anthropic(kind: &str, v: &Value) -> EventKind {
    match kind {
        "content_block_delta" => {
            let delta = v.get("delta");
            match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                Some("text_delta") => EventKind::Content {
                    text: non_empty_str(delta.and_then(|d| d.get("text")))
                        .unwrap_or("")
                        .to_string(),
                    inside: Block::Text,
                },
                Some("input_json_delta") => EventKind::Content {
                    text: String::new(),
                    inside: Block::ToolCall,
                },
                // thinking_delta, signature_delta, and whatever comes next: not plain text.
                _ => EventKind::Content {
                    text: String::new(),
                    inside: Block::Thinking,
                },
            }
        }
        "message_delta" | "message_stop" => EventKind::End,
        "error" => EventKind::Error,
        _ => EventKind::Preamble,
    }
}

/// Checks an upstream stream event by event before anything of it is forwarded: an event
/// whose data is not JSON (nor `[DONE]`) is dropped, never sent to a client SDK that would
/// choke on it; and it notes how the stream ended, so a stream that closes cleanly without its
/// terminator is finished with the client's own, and one that closes mid-answer is not taken
/// for finished. Valid events go on as slices of the bytes read (consecutive ones as one
/// slice): no copy unless an event spans two reads.
#[derive(Debug)]
pub struct EventGuard {
    framer: SseFramer,
    marks: Marks,
}

/// What the guard has seen of a stream (apart from the framer, so checking an event does not
/// borrow the framer's list of the events a read finished).
#[derive(Debug)]
struct Marks {
    stream: Dialect,
    /// OpenAI `[DONE]` or Anthropic `message_stop` seen, or an error event (the provider's
    /// own end of a broken stream, already on its way to the client).
    done: bool,
    /// OpenAI: a finish reason seen; Anthropic: `message_delta` (the stop reason) seen.
    stopped: bool,
    /// Events dropped as malformed so far.
    dropped: u64,
}

/// How an upstream stream that closed cleanly stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// It sent its terminator.
    Complete,
    /// It said it finished but left out the terminator: send the client these bytes.
    Terminate(&'static [u8]),
    /// It closed before saying it finished: a truncation.
    Truncated,
}

#[derive(serde::Deserialize)]
struct ChunkLite {
    #[serde(default)]
    choices: Vec<ChoiceLite>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ChoiceLite {
    #[serde(default)]
    finish_reason: Option<serde::de::IgnoredAny>,
}

impl EventGuard {
    /// A guard for a stream of this dialect's events, none larger than `max_event` bytes.
    pub fn new(stream: impl Into<Dialect>, max_event: usize) -> EventGuard {
        EventGuard {
            framer: SseFramer::new(max_event),
            marks: Marks {
                stream: stream.into(),
                done: false,
                stopped: false,
                dropped: 0,
            },
        }
    }

    /// Events dropped as malformed so far.
    pub fn dropped(&self) -> u64 {
        self.marks.dropped
    }

    /// Feed one read; the valid complete events are pushed to `out` as slices (a run of valid
    /// events as one). `Err` when an event grew past the limit: the stream is broken there.
    pub fn feed(
        &mut self,
        chunk: bytes::Bytes,
        out: &mut Vec<bytes::Bytes>,
    ) -> Result<(), EventTooLarge> {
        let (buf, spans) = self.framer.feed(chunk)?;
        let mut run_start = 0;
        let mut pos = 0;
        for s in spans {
            if !self.marks.check(&buf[s.start..s.data_end]) {
                if run_start < s.start {
                    out.push(buf.slice(run_start..s.start));
                }
                run_start = s.next;
            }
            pos = s.next;
        }
        if run_start < pos {
            out.push(buf.slice(run_start..pos));
        }
        Ok(())
    }

    /// How the stream stands now that it closed cleanly.
    pub fn end(&self) -> StreamEnd {
        self.marks.end()
    }
}

impl Marks {
    /// Whether one raw event (without its blank line) may be forwarded; notes end markers.
    fn check(&mut self, raw: &[u8]) -> bool {
        let (name, data) = fields(raw);
        // Comments and keep-alives carry no data: harmless to every parser.
        let Some(data) = data else {
            return true;
        };
        if self.stream == Dialect::Responses {
            #[derive(serde::Deserialize)]
            struct Typed<'a> {
                #[serde(rename = "type", borrow, default)]
                kind: Option<std::borrow::Cow<'a, str>>,
            }
            let Ok(t) = serde_json::from_slice::<Typed>(&data) else {
                self.dropped += 1;
                return false;
            };
            let kind = if name.is_empty() {
                t.kind.as_deref().unwrap_or("").as_bytes()
            } else {
                name
            };
            // No `[DONE]` here: the typed end events are the stream's end.
            if matches!(
                kind,
                b"response.completed" | b"response.incomplete" | b"response.failed" | b"error"
            ) {
                self.done = true;
            }
            return true;
        }
        if self.stream == Dialect::Chat {
            if data.as_ref() == b"[DONE]" {
                self.done = true;
                return true;
            }
            match serde_json::from_slice::<ChunkLite>(&data) {
                Ok(c) => {
                    self.stopped |= c.choices.iter().any(|c| c.finish_reason.is_some());
                    self.done |= c.error.is_some();
                    true
                }
                // Valid JSON of another shape (an error object) is still JSON.
                Err(e) if !e.is_syntax() && !e.is_eof() => true,
                Err(_) => {
                    self.dropped += 1;
                    false
                }
            }
        } else {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_err() {
                self.dropped += 1;
                return false;
            }
            match name {
                b"message_stop" | b"error" => self.done = true,
                b"message_delta" => self.stopped = true,
                _ => {}
            }
            true
        }
    }

    /// How the stream stands now that it closed cleanly.
    fn end(&self) -> StreamEnd {
        match (self.done, self.stopped, self.stream) {
            (true, _, _) => StreamEnd::Complete,
            (false, true, Dialect::Chat) => StreamEnd::Terminate(b"data: [DONE]\n\n"),
            (false, true, Dialect::Messages) => {
                StreamEnd::Terminate(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
            }
            (false, _, _) => StreamEnd::Truncated,
        }
    }
}

/// One event written back out as SSE (`event:` line when named, one `data:` line per line).
pub fn render(ev: &SseEvent, out: &mut Vec<u8>) {
    if let Some(name) = &ev.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in ev.data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// What a client has received of a stream, kept (only under `stream_recovery: continue`) so a
/// break can be completed elsewhere: the visible text, whether anything but text was sent, the
/// stream's identity fields, and (Anthropic clients) the content blocks opened.
#[derive(Debug)]
pub struct StreamTrack {
    family: Family,
    /// An event not yet complete at the end of the last read.
    partial: Vec<u8>,
    /// The text the client has received, in order.
    pub text: String,
    /// A tool call or thinking was sent: a prefill cannot carry it, so no continuation.
    pub non_text: bool,
    /// The stream said it ended (nothing to continue).
    pub ended: bool,
    /// OpenAI: the first chunk's `id`, `created`, `model`; Anthropic: the message's `id`,
    /// `model`. The continuation's events are rewritten to carry them.
    ident: serde_json::Map<String, Value>,
    /// Anthropic: the content block open now (started, not stopped).
    open_block: Option<u64>,
    /// Anthropic: how many content blocks were started.
    blocks: u64,
    /// Tokens the first part reported (input, output), as far as it did before it broke.
    usage: Usage,
}

/// Token counts a stream reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

impl Usage {
    /// Anthropic's `usage` object (`message_start`'s or `message_delta`'s): what it says.
    fn read_anthropic(&mut self, u: &Value) {
        if let Some(n) = u["input_tokens"].as_u64() {
            self.input = n;
        }
        if let Some(n) = u["output_tokens"].as_u64() {
            self.output = n;
        }
    }
}

impl StreamTrack {
    pub fn new(family: Family) -> StreamTrack {
        StreamTrack {
            family,
            partial: Vec::new(),
            text: String::new(),
            non_text: false,
            ended: false,
            ident: serde_json::Map::new(),
            open_block: None,
            blocks: 0,
            usage: Usage::default(),
        }
    }

    /// Feed the client-format bytes about to be sent; the complete events among them are
    /// appended to `out` as they came (each parsed once to see what it is), except an error
    /// event: `true` means the stream carried one (a break, not sent, so it can be completed).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        let joined;
        let buf: &[u8] = if self.partial.is_empty() {
            bytes
        } else {
            self.partial.extend_from_slice(bytes);
            joined = std::mem::take(&mut self.partial);
            &joined
        };
        let mut pos = 0;
        let mut error = false;
        while let Some((end, sep)) = event_end_at(buf, pos) {
            let raw = &buf[pos..end + sep];
            pos = end + sep;
            if error || !self.see(&raw[..raw.len() - sep]) {
                error = true;
                continue;
            }
            out.extend_from_slice(raw);
        }
        self.partial.extend_from_slice(&buf[pos..]);
        error
    }

    /// Note what one raw event says; `false` for an error event.
    fn see(&mut self, raw: &[u8]) -> bool {
        let (name, data) = fields(raw);
        let Some(data) = data else {
            return true;
        };
        if self.family == Family::OpenAi && data.as_ref() == b"[DONE]" {
            self.ended = true;
            return true;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            return true;
        };
        let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty());
        match classify_value(self.family, name, &v) {
            EventKind::Error => return false,
            EventKind::Content { text, inside } => {
                self.text.push_str(&text);
                self.non_text |= inside != Block::Text;
            }
            EventKind::End => self.ended = true,
            EventKind::Preamble | EventKind::Malformed => {}
        }
        self.note(&v);
        true
    }

    /// Identity fields and block bookkeeping of one event.
    fn note(&mut self, v: &Value) {
        match self.family {
            Family::OpenAi => {
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage = Usage {
                        input: u["prompt_tokens"].as_u64().unwrap_or(0),
                        output: u["completion_tokens"].as_u64().unwrap_or(0),
                    };
                }
                if self.ident.is_empty() {
                    for k in ["id", "created", "model"] {
                        if let Some(x) = v.get(k) {
                            self.ident.insert(k.to_string(), x.clone());
                        }
                    }
                }
            }
            Family::Anthropic => match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    if let Some(m) = v.get("message") {
                        for k in ["id", "model"] {
                            if let Some(x) = m.get(k) {
                                self.ident.insert(k.to_string(), x.clone());
                            }
                        }
                        self.usage.read_anthropic(&m["usage"]);
                    }
                }
                Some("message_delta") => self.usage.read_anthropic(&v["usage"]),
                Some("content_block_start") => {
                    let kind = v
                        .pointer("/content_block/type")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    self.non_text |= kind != "text";
                    self.open_block = v.get("index").and_then(Value::as_u64);
                    self.blocks += 1;
                }
                Some("content_block_stop") => self.open_block = None,
                _ => {}
            },
        }
    }

    /// Whether a break now can be completed by prefill: text only, not ended.
    pub fn continuable(&self) -> bool {
        !self.non_text && !self.ended
    }

    /// The assistant prefill for the continuation: the text sent, without trailing whitespace
    /// (Anthropic refuses a final assistant turn that ends with it); the cut whitespace is
    /// what the continuation will likely start with, and is not sent twice.
    pub fn prefill(&self) -> (&str, &str) {
        let trimmed = self.text.trim_end();
        (trimmed, &self.text[trimmed.len()..])
    }

    /// A splicer for a continuation's client-format events into this stream.
    pub fn splice(&self) -> Splice {
        let (_, cut) = self.prefill();
        Splice {
            family: self.family,
            parser: SseParser::default(),
            events: Vec::new(),
            ident: self.ident.clone(),
            // The continuation's first text block carries on the open one, or starts after the
            // blocks already sent.
            first_index: self.open_block.unwrap_or(self.blocks),
            merge_first: self.open_block.is_some(),
            skip_ws: cut.to_string(),
            started: false,
            first: self.usage,
            continuation_input: 0,
        }
    }
}

/// Rewrites a continuation's client-format events so they read as the rest of the stream the
/// client already has: no second role chunk or `message_start`, the first part's `id`,
/// `created` and `model`, block indices after the ones sent, and the whitespace the prefill
/// cut not sent twice.
#[derive(Debug)]
pub struct Splice {
    family: Family,
    parser: SseParser,
    events: Vec<SseEvent>,
    ident: serde_json::Map<String, Value>,
    first_index: u64,
    merge_first: bool,
    skip_ws: String,
    started: bool,
    /// What the first part reported, added to what the continuation reports: the client's
    /// usage covers both calls, as far as each reported it.
    first: Usage,
    /// Anthropic: the continuation's input tokens (its `message_start` is not sent).
    continuation_input: u64,
}

impl Splice {
    /// Feed continuation bytes (client format); what the client gets is appended to `out`.
    /// `true` when the continuation carried an error event (not sent).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        self.events.clear();
        self.parser.feed(bytes, &mut self.events);
        for mut ev in std::mem::take(&mut self.events) {
            let kind = classify(self.family, &ev);
            match kind {
                EventKind::Error => return true,
                EventKind::Malformed => continue,
                EventKind::Content { .. } => {}
                EventKind::Preamble | EventKind::End => {}
            }
            if self.family == Family::OpenAi && ev.data.trim() == "[DONE]" {
                render(&ev, out);
                continue;
            }
            let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            let keep = match self.family {
                Family::OpenAi => self.openai(&kind, &mut v),
                Family::Anthropic => self.anthropic(&mut v),
            };
            if keep {
                ev.data = v.to_string();
                render(&ev, out);
            }
        }
        false
    }

    /// Drop the text the prefill cut from the start of the continuation's first text.
    fn strip_ws(&mut self, text: &mut Value) {
        if self.skip_ws.is_empty() {
            return;
        }
        if let Some(t) = text.as_str() {
            let stripped = t
                .strip_prefix(self.skip_ws.as_str())
                .unwrap_or(t)
                .to_string();
            *text = Value::String(stripped);
        }
        self.skip_ws.clear();
    }

    fn openai(&mut self, kind: &EventKind, v: &mut Value) -> bool {
        if !self.started
            && *kind == EventKind::Preamble
            && v["choices"].as_array().is_some_and(|c| !c.is_empty())
        {
            // The continuation's role chunk: the client has one already.
            return false;
        }
        if let EventKind::Content {
            inside: Block::Text,
            ..
        } = kind
        {
            if !self.started {
                if let Some(c) = v.pointer_mut("/choices/0/delta/content") {
                    self.strip_ws(c);
                }
            }
            self.started = true;
        }
        if let Some(u) = v.get_mut("usage").filter(|u| u.is_object()) {
            let prompt = u["prompt_tokens"].as_u64().unwrap_or(0) + self.first.input;
            let completion = u["completion_tokens"].as_u64().unwrap_or(0) + self.first.output;
            u["prompt_tokens"] = Value::from(prompt);
            u["completion_tokens"] = Value::from(completion);
            u["total_tokens"] = Value::from(prompt + completion);
        }
        if let Some(obj) = v.as_object_mut() {
            for (k, x) in &self.ident {
                if obj.contains_key(k) {
                    obj.insert(k.clone(), x.clone());
                }
            }
        }
        true
    }

    fn anthropic(&mut self, v: &mut Value) -> bool {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                self.continuation_input = v
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                return false;
            }
            Some("ping") => return false,
            Some("message_delta") => {
                let output = v["usage"]["output_tokens"].as_u64().unwrap_or(0);
                v["usage"]["output_tokens"] = Value::from(output + self.first.output);
                let input = self.first.input + self.continuation_input;
                if input > 0 {
                    v["usage"]["input_tokens"] = Value::from(input);
                }
            }
            Some("content_block_start") => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let is_text =
                    v.pointer("/content_block/type").and_then(Value::as_str) == Some("text");
                if index == 0 && self.merge_first && is_text {
                    return false;
                }
                v["index"] = Value::from(self.first_index + index);
            }
            Some("content_block_delta") => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                v["index"] = Value::from(self.first_index + index);
                if !self.started {
                    if let Some(t) = v.pointer_mut("/delta/text") {
                        self.strip_ws(t);
                    }
                }
                self.started = true;
            }
            Some("content_block_stop") => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                v["index"] = Value::from(self.first_index + index);
            }
            _ => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn text(t: &str) -> EventKind {
        EventKind::Content {
            text: t.to_string(),
            inside: Block::Text,
        }
    }

    #[test]
    fn openai_chunks() {
        let c = |d: &str| classify(Family::OpenAi, &ev(None, d));
        let role = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(c(role), EventKind::Preamble);
        assert_eq!(
            c(r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#),
            text("Hi")
        );
        assert_eq!(
            c(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}}]}"#
            ),
            EventKind::Content {
                text: String::new(),
                inside: Block::ToolCall
            }
        );
        assert_eq!(
            c(r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#),
            EventKind::Content {
                text: String::new(),
                inside: Block::Thinking
            }
        );
        assert_eq!(
            c(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            EventKind::End
        );
        assert_eq!(
            c(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#),
            EventKind::Preamble
        );
        assert_eq!(c("[DONE]"), EventKind::End);
        assert_eq!(c(r#"{"error":{"message":"overloaded"}}"#), EventKind::Error);
        assert_eq!(c("{not json"), EventKind::Malformed);
    }

    #[test]
    fn anthropic_events() {
        let c = |e: &str, d: &str| classify(Family::Anthropic, &ev(Some(e), d));
        assert_eq!(
            c(
                "message_start",
                r#"{"type":"message_start","message":{"id":"m"}}"#
            ),
            EventKind::Preamble
        );
        assert_eq!(c("ping", r#"{"type":"ping"}"#), EventKind::Preamble);
        assert_eq!(
            c(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
            ),
            EventKind::Preamble
        );
        assert_eq!(
            c(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#
            ),
            text("Hello")
        );
        assert_eq!(
            c(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#
            ),
            EventKind::Content {
                text: String::new(),
                inside: Block::ToolCall
            }
        );
        assert_eq!(
            c(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"x"}}"#
            ),
            EventKind::Content {
                text: String::new(),
                inside: Block::Thinking
            }
        );
        assert_eq!(
            c("message_stop", r#"{"type":"message_stop"}"#),
            EventKind::End
        );
        assert_eq!(
            c(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#
            ),
            EventKind::Error
        );
        // Bedrock's decoded frames carry no event name: the type field decides.
        assert_eq!(
            classify(
                Family::Anthropic,
                &ev(
                    None,
                    r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#
                )
            ),
            text("x")
        );
        assert_eq!(c("content_block_delta", "data"), EventKind::Malformed);
    }

    fn chunk(id: &str, delta: serde_json::Value, finish: Option<&str>) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "m-a",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    }

    #[test]
    fn openai_continuation_reads_as_one_stream() {
        let mut track = StreamTrack::new(Family::OpenAi);
        let mut sent = Vec::new();
        let first = [
            chunk(
                "c1",
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            ),
            chunk("c1", serde_json::json!({"content": "Hello "}), None),
            chunk("c1", serde_json::json!({"content": "wor"}), None),
        ]
        .concat();
        // Split mid-event: nothing is lost or duplicated.
        assert!(!track.feed(&first.as_bytes()[..50], &mut sent));
        assert!(!track.feed(&first.as_bytes()[50..], &mut sent));
        assert_eq!(track.text, "Hello wor");
        assert!(track.continuable());
        assert_eq!(track.prefill(), ("Hello wor", ""));
        // An error event is held back and reported.
        let before = sent.len();
        assert!(track.feed(b"data: {\"error\":{\"message\":\"boom\"}}\n\n", &mut sent));
        assert_eq!(sent.len(), before);

        let mut splice = track.splice();
        let mut out = Vec::new();
        let cont = [
            chunk(
                "c2",
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            ),
            chunk("c2", serde_json::json!({"content": "ld!"}), None),
            chunk("c2", serde_json::json!({}), Some("stop")),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        assert!(!splice.feed(cont.as_bytes(), &mut out));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("c2") && !text.contains("\"role\""), "{text}");
        assert!(text.contains(r#""content":"ld!""#) && text.contains(r#""id":"c1""#));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn anthropic_continuation_carries_on_the_open_block() {
        let ev = |name: &str, v: serde_json::Value| format!("event: {name}\ndata: {v}\n\n");
        let mut track = StreamTrack::new(Family::Anthropic);
        let mut sent = Vec::new();
        let first = [
            ev("message_start", serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "model": "m-a", "usage": {"input_tokens": 25, "output_tokens": 2}}})),
            ev("content_block_start", serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ev("content_block_delta", serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "one two "}})),
        ]
        .concat();
        track.feed(first.as_bytes(), &mut sent);
        assert_eq!(track.prefill(), ("one two", " "));
        let mut splice = track.splice();
        let cont = [
            ev("message_start", serde_json::json!({"type": "message_start", "message": {"id": "msg_2", "model": "m-b", "usage": {"input_tokens": 30, "output_tokens": 1}}})),
            ev("content_block_start", serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ev("content_block_delta", serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " three"}})),
            ev("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": 0})),
            ev("message_delta", serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}})),
            ev("message_stop", serde_json::json!({"type": "message_stop"})),
        ]
        .concat();
        let mut out = Vec::new();
        splice.feed(cont.as_bytes(), &mut out);
        // Usage covers both calls: the first part's input 25 (message_start) + the
        // continuation's 30; its output 2 + the continuation's 7.
        assert!(
            String::from_utf8_lossy(&out)
                .contains(r#""usage":{"input_tokens":55,"output_tokens":9}"#),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("msg_2") && !text.contains("content_block_start"),
            "{text}"
        );
        // The cut space is not sent twice: "one two " + "three".
        assert!(text.contains(r#""text":"three""#), "{text}");
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

        // A tool call sent: never continued.
        let mut track = StreamTrack::new(Family::Anthropic);
        track.feed(
            ev("content_block_start", serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}})).as_bytes(),
            &mut Vec::new(),
        );
        assert!(!track.continuable());
    }

    fn guarded(stream: impl Into<Dialect>, reads: &[&str]) -> (String, EventGuard) {
        let mut g = EventGuard::new(stream, 1 << 20);
        let mut out = Vec::new();
        for r in reads {
            g.feed(bytes::Bytes::from(r.to_string()), &mut out)
                .expect("no event over the limit");
        }
        let text = out
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        (text, g)
    }

    #[test]
    fn the_guard_drops_malformed_events_and_knows_how_a_stream_ended() {
        let a = chunk("c", serde_json::json!({"content": "a"}), None);
        let stop = chunk("c", serde_json::json!({}), Some("stop"));
        // A malformed event between two good ones, split across reads.
        let whole = format!("{a}data: {{not json\n\n: keep-alive\n\n{stop}");
        let (text, g) = guarded(
            Family::OpenAi,
            &[&whole[..30], &whole[30..70], &whole[70..]],
        );
        assert_eq!(text, format!("{a}: keep-alive\n\n{stop}"));
        assert_eq!(g.dropped(), 1);
        assert_eq!(g.end(), StreamEnd::Terminate(b"data: [DONE]\n\n"));
        let (_, g) = guarded(Family::OpenAi, &[&a]);
        assert_eq!(g.end(), StreamEnd::Truncated);
        let (text, g) = guarded(Family::OpenAi, &[&format!("{a}{stop}data: [DONE]\n\n")]);
        assert_eq!(g.end(), StreamEnd::Complete);
        assert!(text.ends_with("data: [DONE]\n\n"));
        // An error object is JSON: forwarded.
        let (text, g) = guarded(
            Family::OpenAi,
            &["data: {\"error\":{\"message\":\"x\"}}\n\n"],
        );
        assert_eq!((g.dropped(), text.is_empty()), (0, false));

        let ev = |n: &str, d: &str| format!("event: {n}\ndata: {d}\n\n");
        let (text, g) = guarded(
            Family::Anthropic,
            &[&format!(
                "{}{}{}",
                ev(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#
                ),
                ev("content_block_delta", "{broken"),
                ev(
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#
                )
            )],
        );
        assert!(!text.contains("broken") && text.contains("message_delta"));
        assert_eq!(g.dropped(), 1);
        assert!(matches!(g.end(), StreamEnd::Terminate(_)));
    }

    #[test]
    fn a_responses_stream_ends_with_its_typed_events_not_done() {
        let events = crate::testkit::mock::responses_events("m", 3);
        let all: Vec<&str> = events.iter().map(String::as_str).collect();
        let (text, g) = guarded(Dialect::Responses, &all);
        assert_eq!(text, events.concat(), "every event passed on as it came");
        assert_eq!(g.end(), StreamEnd::Complete);
        // Without `response.completed` it is a truncation, never finished with `[DONE]`.
        let (_, g) = guarded(Dialect::Responses, &all[..all.len() - 1]);
        assert_eq!(g.end(), StreamEnd::Truncated);
        // `response.failed` and `error` are the provider's own end.
        let failed = "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":9}\n\n";
        let (_, g) = guarded(Dialect::Responses, &[all[0], failed]);
        assert_eq!(g.end(), StreamEnd::Complete);
        // The same events read as chat chunks would be a truncation: the old bug.
        let (_, g) = guarded(Family::OpenAi, &all);
        assert_eq!(g.end(), StreamEnd::Truncated);
        let mut parsed = Vec::new();
        SseParser::new(1 << 20).feed(events.concat().as_bytes(), &mut parsed);
        let kinds: Vec<EventKind> = parsed
            .iter()
            .map(|ev| classify(Dialect::Responses, ev))
            .collect();
        assert_eq!(kinds[0], EventKind::Preamble);
        assert!(kinds.contains(&EventKind::Content {
            text: "tok1 ".into(),
            inside: Block::Text
        }));
        assert_eq!(kinds.last(), Some(&EventKind::End));
    }
}
