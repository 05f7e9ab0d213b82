//! The verification server simulator: the three admin API calls the
//! worker makes to issue codes (`/api/batch-issue`, `/api/issue`,
//! `/api/checkcodestatus`), answered as the real server answers them, and
//! a ledger of every SMS it would have sent.
//!
//! The ledger is what tests check "never text a case twice" against. It is
//! also served read-only at `GET /_sim/ledger`, with counts at
//! `GET /_sim/stats`, for operators and the demo.
//!
//! Faults: latency, a fraction of items failing with a 500, errors forced
//! per phone, a per-minute request limit, a daily quota, maintenance mode,
//! and an injected [`Fault`] for the next few issue calls (see
//! [`VerificationSimulator::inject`]). One known difference from the real server: forced per-phone
//! errors such as `sms_failure` are raised before the quota is charged,
//! whereas a real SMS failure happens after it.

mod realm;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::faults::{self, Fault, Injector, Upstream};
use crate::http_util::{self, Connection, Running};
use realm::{RateStatus, Realm};
use wire::{
    BatchIssueAnswer, BatchIssueRequest, CheckCodeStatusRequest, CodeAnswer, CodeStatus, ErrorCode,
    Failure, IssueRequest,
};

/// The largest request body the real server reads.
const MAX_BODY_BYTES: usize = 64_000;

/// The most codes one batch may carry.
const MAX_BATCH_CODES: usize = 10;

/// How the simulated realm is set up, and which faults it injects.
#[derive(Clone, Debug)]
pub struct VerificationConfig {
    /// The admin API key callers must send in `X-API-Key`.
    pub api_key: String,
    /// Added to every answer.
    pub latency: Duration,
    /// Fraction of codes failing with `internal_server_error` (500);
    /// nothing is saved or sent for them.
    pub item_error_rate: f64,
    /// Requests allowed per minute (a batch is one request).
    pub rate_limit_per_minute: Option<u32>,
    /// Codes allowed per 24 hours.
    pub daily_quota: Option<u64>,
    /// Whether a code with neither a test date nor a symptom date is
    /// refused with `missing_date`.
    pub require_date: bool,
    /// The test types the realm issues; other known ones answer
    /// `unsupported_test_type`.
    pub enabled_test_types: Vec<String>,
    /// Whether every code answers `maintenance_mode`.
    pub maintenance: bool,
    /// Whether `/api/batch-issue` is allowed.
    pub allow_bulk: bool,
    /// Seed of the random draws: faults, codes, generated uuids, padding.
    pub seed: u64,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        VerificationConfig {
            api_key: "simulator-admin-key".to_owned(),
            latency: Duration::ZERO,
            item_error_rate: 0.0,
            rate_limit_per_minute: None,
            daily_quota: None,
            require_date: true,
            enabled_test_types: ["confirmed", "likely", "negative", "user-report"]
                .map(str::to_owned)
                .to_vec(),
            maintenance: false,
            allow_bulk: true,
            seed: 0,
        }
    }
}

/// One SMS the simulator "sent".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SmsRecord {
    /// The uuid of the code the SMS carried.
    pub uuid: String,
    /// The E.164 number it went to.
    pub phone: String,
    pub test_date: Option<String>,
    pub symptom_date: Option<String>,
    /// When it was sent, RFC 3339.
    pub sent_at: String,
}

/// A running verification simulator. Dropping it stops the server too,
/// but only `shutdown` waits for the requests in flight.
pub struct VerificationSimulator {
    server: Running,
    shared: Arc<Shared>,
}

/// Starts a verification simulator listening on `addr` (port 0 picks a
/// free one).
pub async fn start(
    config: VerificationConfig,
    addr: SocketAddr,
) -> io::Result<VerificationSimulator> {
    let shared = Arc::new(Shared {
        api_key: config.api_key.clone(),
        faults: Injector::new(Upstream::Verification),
        realm: Mutex::new(Realm::new(&config)),
    });

    let router = Router::new()
        .route("/api/batch-issue", post(batch_issue))
        .route("/api/issue", post(issue))
        .route("/api/checkcodestatus", post(check_code_status))
        .route("/_sim/ledger", get(ledger))
        .route("/_sim/stats", get(stats))
        .with_state(Arc::clone(&shared));
    let server = http_util::serve(router, addr, "verification").await?;

    Ok(VerificationSimulator { server, shared })
}

impl VerificationSimulator {
    /// The base URL, e.g. `http://127.0.0.1:8082`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every SMS sent, in the order sent.
    pub fn ledger(&self) -> Vec<SmsRecord> {
        self.shared.realm().ledger.clone()
    }

    /// Authenticated issue calls received, refused ones included; a batch
    /// counts once.
    pub fn requests(&self) -> u64 {
        self.shared.realm().requests
    }

    /// Authenticated `/api/checkcodestatus` calls received, refused ones
    /// included.
    pub fn checkcodestatus_calls(&self) -> u64 {
        self.shared.realm().status_checks
    }

    /// Makes the next `times` issue calls (`None`: every one until
    /// [`clear_injected`](Self::clear_injected)) answer with `fault`,
    /// replacing any fault injected before. A batch is one call.
    ///
    /// Only `/api/batch-issue` and `/api/issue` take the fault, and only
    /// calls with the right key that are within the rate limit; so a wrong
    /// key is still answered 401 first. `/api/checkcodestatus` and the
    /// `/_sim` routes always answer normally, so a test can ask whether a
    /// code exists after an ambiguous failure. A code issued under a fault
    /// that strikes after issuing is kept and its SMS is in the ledger,
    /// exactly as without the fault. A faulted call still counts in
    /// [`requests`](Self::requests).
    ///
    /// # Panics
    ///
    /// For `Fault::TooManyRequests`, a fault only Twilio shows.
    pub fn inject(&self, fault: Fault, times: Option<u32>) {
        self.shared.faults.arm(fault, times);
    }

    /// Removes the injected fault, if any.
    pub fn clear_injected(&self) {
        self.shared.faults.disarm();
    }

    /// Forces every later code for this phone to fail with `error_code`
    /// (for example `sms_failure`, `sms_queue_full`, `quota_exceeded`,
    /// `internal_server_error`), with the HTTP status the real server
    /// gives that code; nothing is saved or sent for it. An unknown code
    /// is answered as a 400. The phone may be written in any form the
    /// server parses; it is matched in E.164.
    pub fn fail_phone(&self, phone: &str, error_code: &str) {
        let key = realm::e164(phone).unwrap_or_else(|| phone.to_owned());
        self.shared
            .realm()
            .forced
            .insert(key, ErrorCode::parse(error_code));
    }

    /// Removes every fault: the injected one, forced per-phone errors, the
    /// item error rate and maintenance mode. Latency, the rate limit and
    /// the quota are realm settings and stay.
    pub fn clear_faults(&self) {
        self.shared.faults.disarm();
        let mut realm = self.shared.realm();
        realm.forced.clear();
        realm.item_error_rate = 0.0;
        realm.maintenance = false;
    }

    /// Changes the fraction of codes failing with `internal_server_error`.
    pub fn set_item_error_rate(&self, rate: f64) {
        self.shared.realm().item_error_rate = rate;
    }

    /// Changes the latency added to every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.realm().latency = latency;
    }

    /// Changes the per-minute request limit (`None`: no limit). The
    /// current window keeps the requests already counted in it.
    pub fn set_rate_limit_per_minute(&self, limit: Option<u32>) {
        self.shared.realm().rate_limit_per_minute = limit;
    }

    /// Switches maintenance mode on or off.
    pub fn set_maintenance(&self, on: bool) {
        self.shared.realm().maintenance = on;
    }

    /// Changes the daily quota (`None`: no quota). Codes already issued in
    /// the current 24 hours still count.
    pub fn set_daily_quota(&self, quota: Option<u64>) {
        self.shared.realm().daily_quota = quota;
    }

    /// Stops the server and waits for the requests in flight.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// What the handlers and the handle share.
struct Shared {
    api_key: String,
    faults: Injector,
    realm: Mutex<Realm>,
}

/// The two issue calls, which answer in different shapes.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Batch,
    Single,
}

impl Shared {
    fn realm(&self) -> MutexGuard<'_, Realm> {
        // Nothing panics while holding the lock, and the ledger must stay
        // readable for the test that would report such a panic.
        self.realm
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What every admin API call goes through first: the latency, the key
    /// and the per-minute limit. `Err` is the answer to send instead.
    async fn admit(&self, headers: &HeaderMap, is_issue: bool) -> Result<RateStatus, Response> {
        let latency = self.realm().latency;
        tokio::time::sleep(latency).await;

        let key = headers.get("x-api-key").map(HeaderValue::as_bytes);
        if key != Some(self.api_key.as_bytes()) {
            return Err(unauthorized());
        }

        let rate = {
            let mut realm = self.realm();
            if is_issue {
                realm.requests += 1;
            } else {
                realm.status_checks += 1;
            }
            realm.admit(Timestamp::now())
        };
        if rate.limited {
            tracing::debug!(limit = rate.limit, "request over the rate limit");
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Too Many Requests",
            )
                .into_response();
            set_rate_headers(&mut response, &rate);
            insert_header(
                &mut response,
                header::RETRY_AFTER,
                http_util::rfc1123(rate.reset),
            );
            return Err(response);
        }
        Ok(rate)
    }
}

async fn batch_issue(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = shared.issue_call(Endpoint::Batch, &connection, &headers, &body);
    call.await
}

async fn issue(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = shared.issue_call(Endpoint::Single, &connection, &headers, &body);
    call.await
}

impl Shared {
    /// Both issue calls: admission, then the one place an injected fault is
    /// taken and applied around the normal answer.
    async fn issue_call(
        &self,
        endpoint: Endpoint,
        connection: &Connection,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let rate = match self.admit(headers, true).await {
            Ok(rate) => rate,
            Err(refusal) => return refusal,
        };
        let fault = self.faults.take();

        // These fail before anything is issued; the rest spoil the answer
        // of a call that issued and texted its codes as usual.
        let response = match &fault {
            Some(Fault::ServerError) => return internal_error(&rate),
            Some(Fault::HtmlErrorPage) => return faults::html_error_page(),
            Some(Fault::NotJson) => return faults::not_json(),
            Some(Fault::Unauthorized) => return unauthorized(),
            Some(Fault::ErrorCodeIn200) => {
                return self.provider_failure(endpoint, headers, body, &rate);
            }
            _ => match endpoint {
                Endpoint::Batch => self.batch_answer(headers, body, &rate),
                Endpoint::Single => self.single_answer(headers, body, &rate),
            },
        };

        match fault {
            Some(Fault::TruncatedJson) => faults::truncated(response).await,
            Some(Fault::WrongLengthCodes) => one_code_short(response).await,
            Some(Fault::IssueThenServerError) => internal_error(&rate),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                response
            }
            Some(Fault::DropConnection) => faults::dropped(connection),
            _ => response,
        }
    }

    fn batch_answer(&self, headers: &HeaderMap, body: &[u8], rate: &RateStatus) -> Response {
        let request: BatchIssueRequest = match decode(headers, body) {
            Ok(request) => request,
            Err(failure) => return answer(failure.code.status(), &failure.body(), rate),
        };
        let codes = request.codes.unwrap_or_default();

        // Refusals of the batch as a whole carry no errorCode.
        let refusal = if !self.realm().allow_bulk {
            Some("bulk issuing is not enabled for this realm".to_owned())
        } else if codes.is_empty() {
            Some("no codes in the batch".to_owned())
        } else if codes.len() > MAX_BATCH_CODES {
            Some(format!("a batch holds at most {MAX_BATCH_CODES} codes"))
        } else {
            None
        };
        if let Some(error) = refusal {
            let body = serde_json::json!({ "error": error });
            return answer(StatusCode::BAD_REQUEST, &body, rate);
        }

        // The whole batch runs under one lock, so it sees one consistent
        // realm and a concurrent batch cannot slip between its uuid checks.
        let (outcomes, padding) = {
            let mut realm = self.realm();
            let now = Timestamp::now();
            let outcomes: Vec<Result<_, Failure>> =
                codes.iter().map(|code| realm.issue(code, now)).collect();
            (outcomes, http_util::random_padding(&mut realm.rng))
        };

        let failed: Vec<&Failure> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        let issued = outcomes.len() - failed.len();
        tracing::debug!(issued, failed = failed.len(), "batch answered");

        // There is no 207: the first failure sets the status of the whole
        // answer, even when other codes were issued.
        let status = failed.first().map_or(StatusCode::OK, |f| f.code.status());
        let batch = BatchIssueAnswer {
            error: (!failed.is_empty())
                .then(|| format!("{} failed, {issued} issued", failed.len())),
            error_code: failed.first().map(|f| f.code.as_str().to_owned()),
            codes: outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    Ok(code) => CodeAnswer::Issued(code),
                    Err(failure) => CodeAnswer::Failed(failure.body()),
                })
                .collect(),
            padding,
        };
        answer(status, &batch, rate)
    }

    fn single_answer(&self, headers: &HeaderMap, body: &[u8], rate: &RateStatus) -> Response {
        let request: IssueRequest = match decode(headers, body) {
            Ok(request) => request,
            Err(failure) => return answer(failure.code.status(), &failure.body(), rate),
        };

        let (outcome, padding) = {
            let mut realm = self.realm();
            let outcome = realm.issue(&request, Timestamp::now());
            (outcome, http_util::random_padding(&mut realm.rng))
        };
        tracing::debug!(issued = outcome.is_ok(), "issue answered");

        match outcome {
            Ok(code) => answer(StatusCode::OK, &code, rate),
            // The single-code call has answered a duplicate with a 200 and
            // no code since v0.36, unlike the batch call.
            Err(failure) if failure.code == ErrorCode::UuidAlreadyExists => {
                let body = serde_json::json!({ "uuid": request.uuid, "padding": padding });
                answer(StatusCode::OK, &body, rate)
            }
            // A 500 here hides its cause.
            Err(failure) if failure.code == ErrorCode::InternalServerError => internal_error(rate),
            Err(failure) => answer(failure.code.status(), &failure.body(), rate),
        }
    }

    /// A 200 whose every item failed with `internal_server_error`, as when
    /// the server cannot load its SMS provider. Nothing is issued.
    fn provider_failure(
        &self,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: &[u8],
        rate: &RateStatus,
    ) -> Response {
        let failure = Failure::new(
            ErrorCode::InternalServerError,
            "failed to load the SMS provider",
        );
        let Endpoint::Batch = endpoint else {
            return answer(StatusCode::OK, &failure.body(), rate);
        };

        // The answer must still hold one item per code, so the batch is
        // read for its length; one that cannot be read is refused as usual.
        let request: BatchIssueRequest = match decode(headers, body) {
            Ok(request) => request,
            Err(failure) => return answer(failure.code.status(), &failure.body(), rate),
        };
        let count = request.codes.map_or(0, |codes| codes.len());

        // No outer errorCode: a client must find the failures by checking
        // every item, whatever the status says.
        let batch = BatchIssueAnswer {
            codes: vec![CodeAnswer::Failed(failure.body()); count],
            padding: http_util::random_padding(&mut self.realm().rng),
            error: None,
            error_code: None,
        };
        answer(StatusCode::OK, &batch, rate)
    }
}

async fn check_code_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rate = match shared.admit(&headers, false).await {
        Ok(rate) => rate,
        Err(refusal) => return refusal,
    };

    let request: CheckCodeStatusRequest = match decode(&headers, &body) {
        Ok(request) => request,
        Err(failure) => return answer(failure.code.status(), &failure.body(), &rate),
    };

    let (found, padding) = {
        let mut realm = shared.realm();
        let found = realm.code(request.uuid.as_deref().unwrap_or_default());
        (found, http_util::random_padding(&mut realm.rng))
    };
    tracing::debug!(found = found.is_some(), "code status answered");

    match found {
        // Nobody claims codes against the simulator: no app redeems them.
        Some(code) => {
            let status = CodeStatus {
                claimed: false,
                expires_at_timestamp: code.expires_at.as_second(),
                long_expires_at_timestamp: code.long_expires_at.as_second(),
                padding,
            };
            answer(StatusCode::OK, &status, &rate)
        }
        None => {
            let body = serde_json::json!({
                "error": "code not found",
                "errorCode": "code_not_found",
                "error_code": "code_not_found",
            });
            answer(StatusCode::NOT_FOUND, &body, &rate)
        }
    }
}

async fn ledger(State(shared): State<Arc<Shared>>) -> Response {
    let ledger = shared.realm().ledger.clone();
    axum::Json(ledger).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let (requests, sms_sent) = {
        let realm = shared.realm();
        (realm.requests, realm.ledger.len())
    };
    axum::Json(serde_json::json!({ "requests": requests, "sms_sent": sms_sent })).into_response()
}

/// The server's 500, which hides its cause.
fn internal_error(rate: &RateStatus) -> Response {
    let body = serde_json::json!({ "error": "Internal Server Error" });
    answer(StatusCode::INTERNAL_SERVER_ERROR, &body, rate)
}

/// The answer to a missing, unknown or non-admin key. It carries no
/// rate-limit headers: the limit is per realm, and the caller has none.
fn unauthorized() -> Response {
    let body = serde_json::json!({ "error": "unauthorized" });
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// A batch answer with the last item of `codes` left out; any other answer
/// as it was.
async fn one_code_short(response: Response) -> Response {
    let (parts, body) = response.into_parts();

    // Every simulator body is already in memory, so reading it cannot fail.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    if let Some(codes) = json.get_mut("codes").and_then(|c| c.as_array_mut()) {
        codes.pop();
    }

    // The rate-limit headers stay; the length is the new body's.
    let mut shortened = (parts.status, axum::Json(json)).into_response();
    *shortened.headers_mut() = parts.headers;
    shortened.headers_mut().remove(header::CONTENT_LENGTH);
    shortened
}

/// Reads a request body as the real server does: JSON content type, at
/// most 64,000 bytes, no unknown fields, no wrong types.
fn decode<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, Failure> {
    let unparsable = |why: &str| Failure::new(ErrorCode::UnparsableRequest, why);

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(unparsable("content type must be application/json"));
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(unparsable("request body is too large"));
    }

    // The decoder's message can quote the request, and so a phone number;
    // it is not repeated back.
    serde_json::from_slice(body).map_err(|_| unparsable("malformed request body"))
}

/// A JSON answer with the rate-limit headers every authenticated answer
/// carries.
fn answer<T: Serialize>(status: StatusCode, body: &T, rate: &RateStatus) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    set_rate_headers(&mut response, rate);
    response
}

fn set_rate_headers(response: &mut Response, rate: &RateStatus) {
    insert_header(response, "x-ratelimit-limit", rate.limit.to_string());
    insert_header(
        response,
        "x-ratelimit-remaining",
        rate.remaining.to_string(),
    );
    insert_header(
        response,
        "x-ratelimit-reset",
        http_util::rfc1123(rate.reset),
    );
}

fn insert_header<K: axum::http::header::IntoHeaderName>(
    response: &mut Response,
    name: K,
    value: String,
) {
    // Every value here is digits or an RFC 1123 date, always a valid header.
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().insert(name, value);
    }
}
