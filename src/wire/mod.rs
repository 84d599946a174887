//! Everything twinroute knows about the wire formats it speaks, one module per API family
//! (`openai`, `anthropic`, `azure`): auth headers, upstream paths, probe paths, error shapes.
//! Beside them: the request body scanner/splicer (`body`), building an upstream request for a
//! provider (`request`), provider error bodies (`error_body`), twinroute's own error JSON
//! (`errors`), the SSE error event (`sse`), SSE framing (`sse_frame`), what an upstream stream event means for committing to it and
//! continuing it (`stream_event`), token usage in answers (`usage`), the executor's questions to each family (`vendor`), and twinroute's background-job resource (`job`).

pub mod answer;
pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod body;
pub mod error_body;
pub mod errors;
pub mod job;
pub mod json_scan;
pub mod listing;
pub mod openai;
pub mod ratelimit;
pub mod request;
pub mod sse;
pub mod sse_frame;
pub mod stream_event;
pub mod translate;
pub mod usage;
pub mod vendor;
pub mod vertex;
