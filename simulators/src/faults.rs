//! Injected faults: the ways a real upstream misbehaves that a random
//! error rate cannot show, armed on a simulator for its next few requests
//! or until cleared.
//!
//! They exist for the worker's fault tests, which must prove that a case is
//! recorded `sent` only when its SMS really went out. Some faults fail
//! before the upstream does anything; others fail after the verification
//! server has already issued and texted the codes, the ambiguous answers
//! the worker has to settle with `/api/checkcodestatus`. Each simulator
//! takes the armed fault in one place of its request path and applies it
//! there; this module holds what the two share.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http_util::Connection;

/// One way an upstream answers wrongly, or not at all.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 500 with the server's own JSON error body; nothing is issued or
    /// billed.
    ServerError,
    /// 502 with an HTML page (`text/html`), as a proxy in front of the
    /// server answers; nothing is issued or billed.
    HtmlErrorPage,
    /// 200 whose body is not JSON at all, though it claims to be; nothing
    /// is issued or billed.
    NotJson,
    /// The normal answer with its body cut off in the middle, status kept
    /// (200 for a request that went well). The work is done first: the
    /// verification server issues and texts the codes, Twilio bills the
    /// lookup.
    TruncatedJson,
    /// Verification server only: the normal batch answer with the last
    /// item of `codes` left out, after every code was issued and texted.
    /// `/api/issue` has no `codes` and answers normally.
    WrongLengthCodes,
    /// Verification server only: 200 where every item carries `errorCode`
    /// `internal_server_error` and no code, as when the server cannot load
    /// its SMS provider; nothing is issued.
    ErrorCodeIn200,
    /// Verification server only: the codes are issued and texted, then the
    /// answer is a 500, as from a server that failed after sending.
    IssueThenServerError,
    /// Holds the answer this long, then answers normally. The work is done
    /// before the wait, so a client that times out meanwhile cannot tell
    /// whether the codes were issued (or the lookup billed).
    Delay(Duration),
    /// Closes the connection with no answer at all, after the work is done
    /// (codes issued and texted, lookup billed).
    DropConnection,
    /// Twilio only: 429 with Twilio code 20429.
    TooManyRequests,
    /// 401 as the real upstream answers a bad key, even for the right one.
    Unauthorized,
}

/// The upstream a simulator stands in for, which decides the faults it
/// can show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Upstream {
    Twilio,
    Verification,
}

impl Fault {
    fn shown_by(&self, upstream: Upstream) -> bool {
        match self {
            Fault::WrongLengthCodes | Fault::ErrorCodeIn200 | Fault::IssueThenServerError => {
                upstream == Upstream::Verification
            }
            Fault::TooManyRequests => upstream == Upstream::Twilio,
            _ => true,
        }
    }
}

/// The fault armed on one simulator, if any.
pub(crate) struct Injector {
    upstream: Upstream,
    armed: Mutex<Option<Armed>>,
}

struct Armed {
    fault: Fault,
    /// Requests still to take the fault; `None` until cleared. Never
    /// `Some(0)`: the fault is disarmed when the last one takes it.
    remaining: Option<u32>,
}

impl Injector {
    pub(crate) fn new(upstream: Upstream) -> Self {
        Injector {
            upstream,
            armed: Mutex::new(None),
        }
    }

    /// Arms `fault` for the next `times` requests (`None`: until cleared),
    /// replacing whatever was armed.
    ///
    /// # Panics
    ///
    /// If the upstream never answers that way (for example `TooManyRequests`
    /// on the verification server): a fault test that quietly got normal
    /// answers would pass without testing anything.
    pub(crate) fn arm(&self, fault: Fault, times: Option<u32>) {
        assert!(
            fault.shown_by(self.upstream),
            "{fault:?} is not a fault the {:?} simulator can inject",
            self.upstream
        );

        let armed = match times {
            Some(0) => None,
            remaining => Some(Armed { fault, remaining }),
        };
        *self.armed() = armed;
    }

    pub(crate) fn disarm(&self) {
        *self.armed() = None;
    }

    /// The fault this request must show, counted against the armed number
    /// of requests under one lock, so two concurrent requests never both
    /// take the last one.
    pub(crate) fn take(&self) -> Option<Fault> {
        let mut armed = self.armed();
        let current = armed.as_mut()?;
        let fault = current.fault.clone();

        if let Some(remaining) = current.remaining.as_mut() {
            *remaining -= 1;
            if *remaining == 0 {
                *armed = None;
            }
        }
        tracing::debug!(?fault, "injected fault taken");
        Some(fault)
    }

    fn armed(&self) -> MutexGuard<'_, Option<Armed>> {
        // Nothing panics while holding the lock, so what it guards is
        // always whole.
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A 502 page from something in front of the server, in HTML.
pub(crate) fn html_error_page() -> Response {
    let page = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n\
                <body><h1>Bad Gateway</h1><p>No answer came back from the service \
                behind this gateway.</p></body></html>\n";
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

/// A 200 that says it is JSON and is not, so a client can only find out
/// by parsing it.
pub(crate) fn not_json() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "Service Unavailable",
    )
        .into_response()
}

/// `response` with only the first half of its body. The length sent
/// matches what is left, so the client reads a whole, well-formed HTTP
/// answer whose JSON ends too early.
pub(crate) async fn truncated(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();

    // Every simulator body is already in memory, so reading it cannot fail.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let cut = bytes.slice(..bytes.len() / 2);

    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(cut))
}

/// No answer: cuts `connection`, so the response returned here is never
/// written.
pub(crate) fn dropped(connection: &Connection) -> Response {
    connection.sever();
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(injector: &Injector, requests: usize) -> Vec<Option<Fault>> {
        (0..requests).map(|_| injector.take()).collect()
    }

    #[test]
    fn a_fault_armed_for_two_requests_is_taken_twice_then_gone() {
        let injector = Injector::new(Upstream::Twilio);

        injector.arm(Fault::NotJson, Some(2));

        let expected = [Some(Fault::NotJson), Some(Fault::NotJson), None, None];
        assert_eq!(taken(&injector, 4), expected);
    }

    #[test]
    fn a_fault_armed_until_cleared_is_taken_until_disarmed() {
        let injector = Injector::new(Upstream::Twilio);
        injector.arm(Fault::ServerError, None);

        let before = taken(&injector, 5);
        injector.disarm();

        assert!(before.iter().all(|f| *f == Some(Fault::ServerError)));
        assert_eq!(injector.take(), None);
    }

    #[test]
    fn arming_again_replaces_the_fault_and_its_count() {
        let injector = Injector::new(Upstream::Verification);
        injector.arm(Fault::ServerError, None);

        injector.arm(Fault::WrongLengthCodes, Some(1));

        assert_eq!(taken(&injector, 2), [Some(Fault::WrongLengthCodes), None]);
    }

    #[test]
    fn arming_for_zero_requests_arms_nothing() {
        let injector = Injector::new(Upstream::Verification);
        injector.arm(Fault::ServerError, None);

        injector.arm(Fault::HtmlErrorPage, Some(0));

        assert_eq!(injector.take(), None);
    }

    #[test]
    #[should_panic(expected = "not a fault the Twilio simulator can inject")]
    fn a_verification_only_fault_cannot_be_armed_on_twilio() {
        Injector::new(Upstream::Twilio).arm(Fault::IssueThenServerError, None);
    }

    #[test]
    #[should_panic(expected = "not a fault the Verification simulator can inject")]
    fn a_twilio_only_fault_cannot_be_armed_on_the_verification_server() {
        Injector::new(Upstream::Verification).arm(Fault::TooManyRequests, Some(1));
    }
}
