//! Typed client of the Hammer IoT HTTP API (`/api/v1`, bodies from [`hammer_protocol::api`]).
//! The `hammer` CLI, the tests and the fleet simulator talk to the service through it, so
//! there is one place that knows the paths, the bearer token, the paging over `next-cursor`,
//! the event stream and what an error answer means.
//!
//! ```no_run
//! # async fn demo() -> hammer_client::Result<()> {
//! use hammer_client::{Client, Conn, Page};
//! let client = Client::new(&Conn::new("http://127.0.0.1:8080").token("TOKEN"))?;
//! for d in client.devices(None).await?.body {
//!     println!("{} {:?}", d.name, d.state);
//! }
//! let history = client.history("d1", Page::first(20)).await?;
//! # Ok(()) }
//! ```
//!
//! Every [`Error`] reads as one sentence that says what to do next. Text the service sent is
//! kept as it came: escape it before printing it on a terminal.

mod client;
mod error;
mod page;
mod sse;

pub use client::{
    check_url, metric_value, typed, Action, Answer, Client, Conn, EventFilter, DEFAULT_TIMEOUT,
};
pub use error::{Error, Result, Unreachable};
pub use page::{Listed, Order, Page};
pub use reqwest::Method;
pub use sse::SseParser;
