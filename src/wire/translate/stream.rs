//! Streams, event by event as they arrive (nothing is buffered beyond one incomplete event):
//! OpenAI `chat.completion.chunk`s ↔ Anthropic Messages events.
//!
//! | OpenAI chunk | Anthropic event |
//! |---|---|
//! | first chunk (role) | `message_start` |
//! | `delta.content` | `content_block_start` (text, once) + `content_block_delta` `text_delta` |
//! | `delta.tool_calls[i]` with `id` and `name` | `content_block_stop` of the open block + `content_block_start` `tool_use` |
//! | `delta.tool_calls[i].function.arguments` | `content_block_delta` `input_json_delta` |
//! | `finish_reason` | `content_block_stop` + `message_delta` (`stop_reason`, usage) |
//! | usage chunk (`stream_options.include_usage`) | usage of `message_delta` |
//! | `data: [DONE]` | `message_stop` |
//! | — | `ping` (dropped) |
//! | `data: {"error":…}` | `event: error` |

use super::response::{anthropic_usage, openai_usage};
use super::{finish_reason, stop_reason, unix_now, Direction};
use crate::wire::sse_frame::SseFramer;
use serde_json::{json, Value};

/// Splits a byte stream into SSE events (`event:` name and joined `data:` lines), whatever the
/// read boundaries. Keeps only the bytes of an event not yet complete (framing in linear time:
/// `wire::sse_frame`).
#[derive(Debug)]
pub struct SseParser {
    framer: SseFramer,
    /// The framer refused an event over its limit: nothing more is parsed.
    overflowed: bool,
}

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::new(usize::MAX)
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

impl SseParser {
    /// A parser refusing events over `max_event` bytes (`overflowed` tells).
    pub fn new(max_event: usize) -> SseParser {
        SseParser {
            framer: SseFramer::new(max_event),
            overflowed: false,
        }
    }

    /// Feed bytes; complete events are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        if self.overflowed {
            return;
        }
        match self.framer.feed_slice(bytes) {
            Ok((buf, spans)) => {
                for s in spans {
                    if let Some(ev) = parse_event(&buf[s.start..s.data_end]) {
                        out.push(ev);
                    }
                }
            }
            Err(_) => self.overflowed = true,
        }
    }

    /// An event grew past the limit: the stream is broken.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Bytes of an event that never ended (the stream stopped mid-event).
    pub fn pending(&self) -> usize {
        self.framer.pending()
    }
}

fn parse_event(raw: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(raw);
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() && event.is_none() {
        return None;
    }
    Some(SseEvent {
        event,
        data: data.join("\n"),
    })
}

/// Translates one upstream stream into the client's format.
#[derive(Debug)]
pub struct StreamTranslator {
    dir: Direction,
    parser: SseParser,
    events: Vec<SseEvent>,
    /// OpenAI client only: send the final usage chunk (`stream_options.include_usage`).
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    started: bool,
    /// Anthropic client: the open content block (index, is a tool call).
    open_block: Option<(usize, bool)>,
    next_block: usize,
    /// Maps the source's tool indexes (OpenAI `tool_calls[].index` or Anthropic block index) to
    /// the target's (Anthropic block index or OpenAI tool index).
    tools: Vec<(u64, usize)>,
    next_tool: usize,
    finish: Option<String>,
    usage: Option<Value>,
    input_tokens: u64,
    done: bool,
}

impl StreamTranslator {
    pub fn new(dir: Direction, include_usage: bool) -> StreamTranslator {
        StreamTranslator {
            dir,
            parser: SseParser::default(),
            events: Vec::new(),
            include_usage,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            started: false,
            open_block: None,
            next_block: 0,
            tools: Vec::new(),
            next_tool: 0,
            finish: None,
            usage: None,
            input_tokens: 0,
            done: false,
        }
    }

    /// The stream reached its own end marker (`[DONE]`, `message_stop`) or an error event.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Translate one upstream read; what the client gets is appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut events = std::mem::take(&mut self.events);
        self.parser.feed(bytes, &mut events);
        for ev in events.drain(..) {
            if self.done {
                break;
            }
            match self.dir {
                Direction::AnthropicToOpenAi => self.openai_chunk_to_anthropic(&ev, out),
                Direction::OpenAiToAnthropic => self.anthropic_event_to_openai(&ev, out),
            }
        }
        self.events = events;
    }

    /// The upstream ended without its end marker but after a finish reason: close the client's
    /// stream properly. Returns whether it is now complete (otherwise the caller reports a break).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        if self.done {
            return true;
        }
        if self.finish.is_none() {
            return false;
        }
        match self.dir {
            Direction::AnthropicToOpenAi => self.anthropic_finish(out),
            Direction::OpenAiToAnthropic => self.openai_finish(out),
        }
        true
    }

    // ---- OpenAI provider, Anthropic client ----

    fn emit_anthropic(out: &mut Vec<u8>, kind: &str, data: Value) {
        out.extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    }

    fn anthropic_start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        Self::emit_anthropic(
            out,
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open_block.take() {
            Self::emit_anthropic(
                out,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn openai_chunk_to_anthropic(&mut self, ev: &SseEvent, out: &mut Vec<u8>) {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.anthropic_finish(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(err) = chunk.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("provider error");
            Self::emit_anthropic(
                out,
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            );
            self.done = true;
            return;
        }
        if self.id.is_empty() {
            self.id = chunk["id"].as_str().unwrap_or("msg_twinroute").to_string();
            self.model = chunk["model"].as_str().unwrap_or_default().to_string();
        }
        self.anthropic_start(out);
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(anthropic_usage(Some(u)));
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.open_block.is_some_and(|(_, tool)| tool) {
                self.close_block(out);
            }
            let index = match self.open_block {
                Some((i, _)) => i,
                None => {
                    let i = self.next_block;
                    self.next_block += 1;
                    self.open_block = Some((i, false));
                    Self::emit_anthropic(
                        out,
                        "content_block_start",
                        json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                    );
                    i
                }
            };
            Self::emit_anthropic(
                out,
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let source = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let known = self.tools.iter().find(|(s, _)| *s == source).map(|t| t.1);
            let index = match known {
                Some(i) => i,
                None => {
                    self.close_block(out);
                    let i = self.next_block;
                    self.next_block += 1;
                    self.tools.push((source, i));
                    self.open_block = Some((i, true));
                    Self::emit_anthropic(
                        out,
                        "content_block_start",
                        json!({"type": "content_block_start", "index": i, "content_block": {
                            "type": "tool_use", "id": call.get("id").cloned().unwrap_or(Value::Null),
                            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                            "input": {}}}),
                    );
                    i
                }
            };
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                Self::emit_anthropic(
                    out,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
        }
    }

    fn anthropic_finish(&mut self, out: &mut Vec<u8>) {
        self.anthropic_start(out);
        self.close_block(out);
        let usage = self
            .usage
            .clone()
            .unwrap_or_else(|| json!({"input_tokens": 0, "output_tokens": 0}));
        Self::emit_anthropic(
            out,
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(self.finish.as_deref().unwrap_or("stop")), "stop_sequence": null},
                   "usage": usage}),
        );
        Self::emit_anthropic(out, "message_stop", json!({"type": "message_stop"}));
        self.done = true;
    }

    // ---- Anthropic provider, OpenAI client ----

    fn emit_chunk(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
        let chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }

    fn anthropic_event_to_openai(&mut self, ev: &SseEvent, out: &mut Vec<u8>) {
        let Ok(v) = serde_json::from_str::<Value>(ev.data.trim()) else {
            return;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(ev.event.as_deref())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let m = &v["message"];
                self.id = m["id"].as_str().unwrap_or("chatcmpl-twinroute").to_string();
                self.model = m["model"].as_str().unwrap_or_default().to_string();
                self.input_tokens = openai_usage(m.get("usage"))["prompt_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                self.started = true;
                self.emit_chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            "content_block_start" => {
                let block = &v["content_block"];
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let source = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let t = self.next_tool;
                    self.next_tool += 1;
                    self.tools.push((source, t));
                    self.emit_chunk(
                        out,
                        json!({"tool_calls": [{"index": t, "id": block.get("id").cloned().unwrap_or(Value::Null),
                               "type": "function", "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""}}]}),
                        None,
                    );
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = d.get("text").cloned().unwrap_or(json!(""));
                        self.emit_chunk(out, json!({"content": text}), None);
                    }
                    Some("input_json_delta") => {
                        let source = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        if let Some(&(_, t)) = self.tools.iter().find(|(s, _)| *s == source) {
                            let args = d.get("partial_json").cloned().unwrap_or(json!(""));
                            self.emit_chunk(
                                out,
                                json!({"tool_calls": [{"index": t, "function": {"arguments": args}}]}),
                                None,
                            );
                        }
                    }
                    // Thinking is refused before routing; a signature or other delta has no
                    // chat-completions form.
                    _ => {}
                }
            }
            "message_delta" => {
                let stop = v
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                let f = finish_reason(stop);
                self.finish = Some(f.to_string());
                let mut usage = v.get("usage").cloned().unwrap_or(json!({}));
                if usage.get("input_tokens").is_none() {
                    usage["input_tokens"] = json!(self.input_tokens);
                }
                self.usage = Some(openai_usage(Some(&usage)));
                self.emit_chunk(out, json!({}), Some(f));
            }
            "message_stop" => self.openai_finish(out),
            "error" => {
                let message = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("provider error");
                let kind = v
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error");
                let e = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
                out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
                self.done = true;
            }
            // ping and anything new: nothing for the client.
            _ => {}
        }
    }

    fn openai_finish(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            let usage = self.usage.clone().unwrap_or_else(|| openai_usage(None));
            let chunk = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage,
            });
            out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/translate/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap()
    }

    fn events(bytes: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        p.feed(bytes, &mut out);
        out
    }

    /// Feed `input` split at every `step` bytes (read boundaries must not matter).
    fn translate(dir: Direction, usage: bool, input: &str, step: usize) -> (String, bool) {
        let mut t = StreamTranslator::new(dir, usage);
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(step) {
            t.feed(piece, &mut out);
        }
        let done = t.is_done();
        (String::from_utf8(out).unwrap(), done)
    }

    #[test]
    fn parser_handles_split_reads_crlf_comments_and_multiline_data() {
        let raw =
            b": keepalive\r\n\r\nevent: ping\ndata: {\"type\": \"ping\"}\n\ndata: a\ndata: b\n\n";
        let whole = events(raw);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].event.as_deref(), Some("ping"));
        assert_eq!(whole[1].data, "a\nb");
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for b in raw.chunks(1) {
            p.feed(b, &mut out);
        }
        assert_eq!(out, whole);
        assert_eq!(p.pending(), 0);
        p.feed(b"data: half", &mut out);
        assert_eq!(p.pending(), 10);
    }

    /// An Anthropic stream with text and a tool call (the shape of the API docs' example)
    /// becomes the chunks an OpenAI client expects, at any read split.
    #[test]
    fn anthropic_tool_stream_becomes_openai_chunks() {
        let input = fixture("anthropic_stream_tools.txt");
        let (whole, done) = translate(Direction::OpenAiToAnthropic, true, &input, input.len());
        assert!(done);
        for step in [1, 7, 64] {
            let (split, _) = translate(Direction::OpenAiToAnthropic, true, &input, step);
            let strip = |s: &str| -> Vec<Value> {
                events(s.as_bytes())
                    .iter()
                    .filter(|e| e.data != "[DONE]")
                    .map(|e| {
                        let mut v: Value = serde_json::from_str(&e.data).unwrap();
                        v["created"] = json!(0);
                        v
                    })
                    .collect()
            };
            assert_eq!(strip(&split), strip(&whole), "split at {step}");
        }
        let chunks: Vec<Value> = events(whole.as_bytes())
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");
        let call_start = chunks
            .iter()
            .find_map(|c| c.pointer("/choices/0/delta/tool_calls/0/id"))
            .unwrap();
        assert_eq!(call_start, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
        let args: String = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments"))
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
        );
        let finish = chunks
            .iter()
            .find_map(|c| {
                c.pointer("/choices/0/finish_reason")
                    .and_then(Value::as_str)
            })
            .unwrap();
        assert_eq!(finish, "tool_calls");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], 89);
        assert_eq!(last["usage"]["prompt_tokens"], 472);
        assert!(whole.ends_with("data: [DONE]\n\n"));
        // Without include_usage, no usage chunk.
        let (plain, _) = translate(Direction::OpenAiToAnthropic, false, &input, input.len());
        assert!(!plain.contains("\"usage\""));
    }

    /// An OpenAI stream with two parallel tool calls becomes Anthropic events an SDK can
    /// accumulate: one block per call, arguments as input_json_delta, stop_reason tool_use.
    #[test]
    fn openai_parallel_tool_stream_becomes_anthropic_events() {
        let input = fixture("openai_stream_tools.txt");
        let (out, done) = translate(Direction::AnthropicToOpenAi, false, &input, 5);
        assert!(done);
        let evs = events(out.as_bytes());
        let kinds: Vec<&str> = evs.iter().map(|e| e.event.as_deref().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let data: Vec<Value> = evs
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(data[4]["content_block"]["id"], "call_1");
        assert_eq!(data[8]["content_block"]["name"], "get_weather");
        assert_eq!(data[8]["index"], 2);
        let args: String = data
            .iter()
            .filter(|d| d["index"] == 2)
            .filter_map(|d| d.pointer("/delta/partial_json").and_then(Value::as_str))
            .collect();
        assert_eq!(args, "{\"location\":\"Paris\"}");
        assert_eq!(data[12]["delta"]["stop_reason"], "tool_use");
        assert_eq!(data[12]["usage"]["output_tokens"], 31);
        assert_eq!(data[12]["usage"]["input_tokens"], 70);
    }

    #[test]
    fn error_events_and_unterminated_streams() {
        let mut t = StreamTranslator::new(Direction::OpenAiToAnthropic, false);
        let mut out = Vec::new();
        t.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", &mut out);
        assert!(t.is_done());
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("data: {\"error\""), "{s}");
        assert!(s.contains("overloaded_error"));
        // Ended after its finish reason but without [DONE]: finished for the client.
        let mut t = StreamTranslator::new(Direction::AnthropicToOpenAi, false);
        let mut out = Vec::new();
        t.feed(b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n", &mut out);
        assert!(!t.is_done());
        assert!(t.finish(&mut out));
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        // Cut before any finish reason: not finished; the caller reports the break.
        let mut t = StreamTranslator::new(Direction::AnthropicToOpenAi, false);
        let mut out = Vec::new();
        t.feed(b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n", &mut out);
        assert!(!t.finish(&mut out));
    }
}
