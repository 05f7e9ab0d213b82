//! The Twilio Lookup v2 simulator: `GET /v2/PhoneNumbers/{PhoneNumber}`,
//! which the worker calls before it asks for a code to be texted.
//!
//! It checks Basic auth like Twilio, answers from the `phonenumber`
//! metadata and a fixed line-type rule (see [`line_type_for`]), and counts
//! every paid lookup so tests can tell how much a run would have cost.
//! Faults: added latency, a fraction of 500s, a cap on lookups in flight
//! past which Twilio answers 429 (Twilio limits concurrency, not a request
//! rate), and an injected [`Fault`] for the next few lookups.

mod lookup;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

pub use lookup::{LineType, line_type_for};

use crate::faults::{self, Fault, Injector, Upstream};
use crate::http_util::{self, Connection, Running};

/// How the Twilio simulator authenticates callers and which faults it
/// injects.
#[derive(Clone, Debug)]
pub struct TwilioConfig {
    /// The Account SID, the Basic auth user.
    pub account_sid: String,
    /// The Auth Token, the Basic auth password.
    pub auth_token: String,
    /// Added to every answer.
    pub latency: Duration,
    /// Fraction of lookups answered 500, between 0 and 1.
    pub error_rate: f64,
    /// Lookups in flight above this are answered 429 (Twilio code 20429).
    pub max_concurrent: Option<usize>,
    /// Seed of the random draws behind `error_rate`, so a failing run can
    /// be replayed.
    pub seed: u64,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            account_sid: "ACsimulator".to_owned(),
            auth_token: "simulator-token".to_owned(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            max_concurrent: None,
            seed: 0,
        }
    }
}

/// A running Twilio simulator. Dropping it stops the server too, but only
/// `shutdown` waits for the lookups in flight.
pub struct TwilioSimulator {
    server: Running,
    shared: Arc<Shared>,
}

/// Starts a Twilio simulator listening on `addr` (port 0 picks a free one).
pub async fn start(config: TwilioConfig, addr: SocketAddr) -> io::Result<TwilioSimulator> {
    let authorization = format!(
        "Basic {}",
        http_util::base64(format!("{}:{}", config.account_sid, config.auth_token).as_bytes())
    );
    let shared = Arc::new(Shared {
        authorization,
        in_flight: AtomicUsize::new(0),
        faults: Injector::new(Upstream::Twilio),
        state: Mutex::new(SimState {
            latency: config.latency,
            error_rate: config.error_rate,
            max_concurrent: config.max_concurrent,
            rng: fastrand::Rng::with_seed(config.seed),
            paid: HashMap::new(),
        }),
    });

    let router = Router::new()
        .route("/v2/PhoneNumbers/{number}", get(phone_number))
        .fallback(not_found)
        .with_state(Arc::clone(&shared));
    let server = http_util::serve(router, addr, "twilio").await?;

    Ok(TwilioSimulator { server, shared })
}

impl TwilioSimulator {
    /// The base URL, e.g. `http://127.0.0.1:8081`; lookups go to
    /// `{url}/v2/PhoneNumbers/...`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Lookups answered 200 with `line_type_intelligence`, the ones Twilio
    /// would bill.
    pub fn paid_lookups(&self) -> u64 {
        self.shared.state().paid.values().sum()
    }

    /// Paid lookups per E.164 number, to spot a number looked up twice.
    pub fn lookups_by_phone(&self) -> HashMap<String, u64> {
        self.shared.state().paid.clone()
    }

    /// Changes the fraction of lookups answered 500.
    pub fn set_error_rate(&self, rate: f64) {
        self.shared.state().error_rate = rate;
    }

    /// Changes the latency added to every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.state().latency = latency;
    }

    /// Changes the number of lookups allowed in flight (`None`: no limit).
    pub fn set_max_concurrent(&self, limit: Option<usize>) {
        self.shared.state().max_concurrent = limit;
    }

    /// Makes the next `times` lookups (`None`: every lookup until
    /// [`clear_injected`](Self::clear_injected)) answer with `fault`,
    /// replacing any fault injected before. Only lookups with the right
    /// credentials that get past the concurrency limit take it.
    ///
    /// # Panics
    ///
    /// For a fault only the verification server shows (`WrongLengthCodes`,
    /// `ErrorCodeIn200`, `IssueThenServerError`).
    pub fn inject(&self, fault: Fault, times: Option<u32>) {
        self.shared.faults.arm(fault, times);
    }

    /// Removes the injected fault, if any.
    pub fn clear_injected(&self) {
        self.shared.faults.disarm();
    }

    /// Stops the server and waits for the lookups in flight.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// What the handlers and the handle share.
struct Shared {
    /// The whole `Authorization` header a caller must send.
    authorization: String,
    in_flight: AtomicUsize,
    faults: Injector,
    state: Mutex<SimState>,
}

struct SimState {
    latency: Duration,
    error_rate: f64,
    max_concurrent: Option<usize>,
    rng: fastrand::Rng,
    /// Paid lookups per E.164 number.
    paid: HashMap<String, u64>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SimState> {
        // No code panics while holding the lock, and the counters stay
        // meaningful even if one did, so a poisoned lock is still used.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Answers a lookup that passed every fault, and bills it if it was
    /// a paid one.
    fn answer(&self, number: &str, query: &LookupQuery) -> Response {
        let answer = lookup::look_up(
            number,
            query.country_code.as_deref(),
            query.fields.as_deref(),
        );
        if let Some(e164) = answer.paid_for() {
            *self.state().paid.entry(e164.to_owned()).or_default() += 1;
        }
        tracing::debug!(
            valid = answer.valid,
            paid = answer.paid_for().is_some(),
            "lookup answered"
        );

        (StatusCode::OK, axum::Json(answer)).into_response()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .is_some_and(|value| value.as_bytes() == self.authorization.as_bytes())
    }
}

/// A lookup counted in flight until dropped, which also covers a caller
/// that hangs up mid-lookup.
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    /// Lookups in flight when this one arrived, itself included.
    count: usize,
}

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let count = counter.fetch_add(1, Ordering::SeqCst) + 1;
        InFlight { counter, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The query parameters Lookup v2 reads; others are ignored.
#[derive(Debug, Deserialize)]
struct LookupQuery {
    #[serde(rename = "Fields")]
    fields: Option<String>,
    #[serde(rename = "CountryCode")]
    country_code: Option<String>,
}

async fn phone_number(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    headers: HeaderMap,
    number: Result<Path<String>, PathRejection>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Response {
    // A caller Twilio does not know holds no concurrency slot.
    if !shared.authorized(&headers) {
        let latency = shared.state().latency;
        tokio::time::sleep(latency).await;
        return unauthorized();
    }

    let slot = InFlight::enter(&shared.in_flight);
    let concurrent = slot.count;
    let (latency, over_limit, fails) = {
        let mut state = shared.state();
        let over_limit = state.max_concurrent.is_some_and(|limit| concurrent > limit);
        let fails = state.rng.f64() < state.error_rate;
        (state.latency, over_limit, fails)
    };

    // A refused lookup stops counting at once, so a burst past the limit
    // does not keep the next caller out as well.
    if over_limit {
        drop(slot);
    }
    tokio::time::sleep(latency).await;

    // The one place an injected fault is taken. A lookup refused for the
    // concurrency limit never reached the lookup, so it takes none; one
    // that takes a fault gets that instead of the random 500s.
    let fault = if over_limit {
        None
    } else {
        shared.faults.take()
    };
    let mut response = match &fault {
        None if over_limit => too_many_requests(),
        None if fails => internal_error(),
        Some(Fault::ServerError) => internal_error(),
        Some(Fault::TooManyRequests) => too_many_requests(),
        Some(Fault::Unauthorized) => unauthorized(),
        Some(Fault::HtmlErrorPage) => faults::html_error_page(),
        Some(Fault::NotJson) => faults::not_json(),
        // The other faults spoil the answer of a lookup made, and billed,
        // as usual.
        _ => match (number, query) {
            (Ok(Path(number)), Ok(Query(query))) => shared.answer(&number, &query),
            _ => twilio_error(StatusCode::BAD_REQUEST, 20001, "Bad request"),
        },
    };

    // The header Twilio uses to tell a client how close it is to the
    // account's concurrency limit.
    response
        .headers_mut()
        .insert("twilio-concurrent-requests", HeaderValue::from(concurrent));

    match fault {
        Some(Fault::TruncatedJson) => faults::truncated(response).await,
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            response
        }
        Some(Fault::DropConnection) => faults::dropped(&connection),
        _ => response,
    }
}

/// Twilio's answer for a path it has no resource at.
async fn not_found() -> Response {
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        "The requested resource was not found",
    )
}

fn unauthorized() -> Response {
    twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
}

fn too_many_requests() -> Response {
    let message = "Too many concurrent requests";
    twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, message)
}

fn internal_error() -> Response {
    let message = "Internal Server Error";
    twilio_error(StatusCode::INTERNAL_SERVER_ERROR, 20500, message)
}

/// Twilio's error body: its own code, a message and a link to the code's page.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}
