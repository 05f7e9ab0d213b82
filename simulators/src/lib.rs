//! Local stand-ins for the two HTTP services the worker calls: Twilio
//! Lookup, which says what kind of line a number is, and the verification
//! server, which issues a code and texts it.
//!
//! Both run in-process on any address (port 0 included), so the worker's
//! tests, the demo and the benchmarks can drive the whole pipeline with no
//! network. Each keeps what the real service would have charged or sent:
//! paid lookups for Twilio, a ledger of every SMS for the verification
//! server. Faults (latency, errors, rate limits, quota, maintenance) can be
//! switched on at start and changed while running, and the misbehaviours
//! of [`faults::Fault`] (broken answers, answers lost after the work was
//! done) can be injected for the next few requests.

pub mod config;
pub mod faults;
mod http_util;
pub mod twilio;
pub mod verification;

/// Both simulators with their default settings, each on a free loopback
/// port: what a test or the demo needs before it changes any knob.
pub async fn start_local()
-> std::io::Result<(twilio::TwilioSimulator, verification::VerificationSimulator)> {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let twilio = twilio::start(twilio::TwilioConfig::default(), loopback).await?;
    let verification =
        verification::start(verification::VerificationConfig::default(), loopback).await?;
    Ok((twilio, verification))
}
