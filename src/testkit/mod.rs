//! Test doubles shared by the demo, the black-box tests and the benchmarks: loopback mock
//! providers, a small HTTP client, and the fuzz targets' properties. Nothing of the proxy's
//! request path imports this (the layer check enforces it).

pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod mock;
pub mod sigv4_check;
