//! Pure decisions: no I/O, no clock reads (time is passed in), no locks. Candidate order over a
//! health snapshot (`route`), what an attempt's result means (`outcome`), how long to wait
//! between attempts (`backoff`), and the attempt state machine (`attempt`): an attempt's outcome
//! in, the next step and the health signal to emit out; `Idempotency-Key` rules
//! (`idempotency`), the prompt cache's (`cache`) the background queue's (`queue`), and when to return
//! freed memory (`memory`).

pub mod attempt;
pub mod backoff;
pub mod budget;
pub mod cache;
pub mod idempotency;
pub mod memory;
pub mod outcome;
pub mod queue;
pub mod rate;
pub mod route;
