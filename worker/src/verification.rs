//! The verification server's batch-issue call, and the reading of its
//! answer. A batch is not atomic and its HTTP status is only the status of
//! its first failure, so every item is classified on its own: sent, refused
//! for good, or worth retrying with the same uuid.

use canotify_common::Secret;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::core::Fatal;
use crate::lookup::transport_reason;

/// The most codes one batch-issue call may carry.
pub const MAX_BATCH: usize = 10;

/// One code to issue, holding only fields the server knows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueRequest {
    pub test_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symptom_date: Option<String>,
    pub tz_offset: i32,
    pub phone: String,
    pub uuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_template_label: Option<String>,
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    codes: &'a [IssueRequest],
}

/// What one item of a batch answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemVerdict {
    /// Issued and texted; `already_issued` when an earlier attempt did it.
    Sent { already_issued: bool },
    /// Refused for good; the reason is the server's error code.
    Rejected { reason: String },
    /// Not issued now, but it may be later: try again with the same uuid.
    Retry { reason: String },
    /// The realm's daily quota is spent: wait hours, not seconds.
    QuotaExceeded,
}

/// What a whole batch answer means.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchVerdict {
    /// One verdict per item, in request order.
    Items(Vec<ItemVerdict>),
    /// The request rate limit: nothing was looked at; wait and send again.
    RateLimited { retry_after: Option<Timestamp> },
    /// The key or the caller's address was refused.
    Unauthorized,
    /// The server is not where the configuration says.
    NotFound { status: u16 },
}

#[derive(Clone)]
pub struct VerificationClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
}

impl VerificationClient {
    pub fn new(http: reqwest::Client, base_url: &str, api_key: Secret) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
        }
    }

    /// Sends one batch (at most `MAX_BATCH` codes) and classifies the answer.
    pub async fn batch_issue(&self, codes: &[IssueRequest]) -> BatchVerdict {
        assert!(
            !codes.is_empty() && codes.len() <= MAX_BATCH,
            "a batch holds 1 to {MAX_BATCH} codes"
        );
        let sent = self
            .http
            .post(format!("{}/api/batch-issue", self.base_url))
            .header("X-API-Key", self.api_key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&BatchRequest { codes })
            .send()
            .await;

        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                return every_item(codes.len(), retry(&transport_reason("verification", &err)));
            }
        };
        let status = response.status().as_u16();
        let retry_after = rate_limit_ends(response.headers());
        match response.bytes().await {
            Ok(body) => classify_batch(status, &body, codes.len(), retry_after),
            Err(err) => every_item(codes.len(), retry(&transport_reason("verification", &err))),
        }
    }
}

/// What the server says of one uuid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeStatus {
    /// A code exists for it: it was issued, and texted.
    Issued,
    /// No code: issuing again with the same uuid is safe.
    NotFound,
    /// No usable answer; issuing again is still safe, since the server
    /// refuses a second code for one uuid.
    Unknown,
}

impl VerificationClient {
    /// Asks whether a code exists for `uuid`, after a failure that left it
    /// unknown whether the server issued one.
    pub async fn check_code_status(&self, uuid: &str) -> Result<CodeStatus, Fatal> {
        let sent = self
            .http
            .post(format!("{}/api/checkcodestatus", self.base_url))
            .header("X-API-Key", self.api_key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&serde_json::json!({ "uuid": uuid }))
            .send()
            .await;
        let Ok(response) = sent else {
            return Ok(CodeStatus::Unknown);
        };
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        match status {
            200 if serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object()) => {
                Ok(CodeStatus::Issued)
            }
            401 | 403 => Err(Fatal::VerificationUnauthorized),
            404 => {
                let code = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                    v.get("errorCode")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                if code.as_deref() == Some("code_not_found") {
                    Ok(CodeStatus::NotFound)
                } else {
                    Err(Fatal::VerificationNotFound { status })
                }
            }
            _ => Ok(CodeStatus::Unknown),
        }
    }
}

/// Whether a retryable failure leaves it unknown if the code was issued:
/// the request may have reached the server (a timeout, a 5xx, a garbled or
/// short answer). A refused connection or a server that said what it did
/// not do is not ambiguous.
pub fn is_ambiguous(reason: &str) -> bool {
    matches!(
        reason,
        "verification_timeout"
            | "verification_transport_error"
            | "verification_wrong_item_count"
            | "verification_item_without_code"
            | "verification_unreadable_item"
            | "internal_server_error"
    ) || reason.starts_with("verification_unreadable_http_")
}

fn retry(reason: &str) -> ItemVerdict {
    ItemVerdict::Retry {
        reason: reason.to_owned(),
    }
}

fn every_item(n: usize, verdict: ItemVerdict) -> BatchVerdict {
    BatchVerdict::Items(vec![verdict; n])
}

/// Reads a batch answer of `expected` items.
pub fn classify_batch(
    status: u16,
    body: &[u8],
    expected: usize,
    retry_after: Option<Timestamp>,
) -> BatchVerdict {
    if status == 401 || status == 403 {
        return BatchVerdict::Unauthorized;
    }
    if status == 404 || status == 405 {
        return BatchVerdict::NotFound { status };
    }

    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        // The request rate limit answers in plain text; anything else that
        // is not JSON is a garbled answer, and nobody knows what was issued.
        if status == 429 {
            return BatchVerdict::RateLimited { retry_after };
        }
        return every_item(
            expected,
            retry(&format!("verification_unreadable_http_{status}")),
        );
    };

    match answer.get("codes") {
        Some(Value::Array(codes)) if codes.len() == expected => {
            BatchVerdict::Items(codes.iter().map(classify_item).collect())
        }
        Some(_) => every_item(expected, retry("verification_wrong_item_count")),
        // No items: the outer error speaks for every code.
        None => {
            let verdict = match error_code(&answer) {
                Some(code) => classify_error(code, message(&answer)),
                None if (400..500).contains(&status) => ItemVerdict::Rejected {
                    reason: format!("batch_refused_http_{status}"),
                },
                None => retry(&format!("verification_unreadable_http_{status}")),
            };
            every_item(expected, verdict)
        }
    }
}

/// Reads one item of a batch answer.
pub fn classify_item(item: &Value) -> ItemVerdict {
    let Value::Object(item) = item else {
        return retry("verification_unreadable_item");
    };

    // Even a 200 can carry an error code; it wins over a code being present.
    if let Some(code) = error_code(item) {
        return classify_error(code, message(item));
    }
    match item.get("code") {
        Some(Value::String(code)) if !code.is_empty() => ItemVerdict::Sent {
            already_issued: false,
        },
        _ => retry("verification_item_without_code"),
    }
}

/// Reads one error code, with its message for the one code whose meaning
/// depends on it.
pub fn classify_error(code: &str, message: &str) -> ItemVerdict {
    match code {
        "uuid_already_exists" => ItemVerdict::Sent {
            already_issued: true,
        },
        "unparsable_request"
        | "invalid_test_type"
        | "unsupported_test_type"
        | "missing_date"
        | "invalid_date"
        | "phone_number_invalid" => ItemVerdict::Rejected {
            reason: code.to_owned(),
        },
        "sms_failure" if sms_failure_is_transient(message) => retry(code),
        "sms_failure" => ItemVerdict::Rejected {
            reason: code.to_owned(),
        },
        "quota_exceeded" => ItemVerdict::QuotaExceeded,
        // internal_server_error, sms_queue_full, maintenance_mode, and any
        // code this version does not know yet: try again, a bounded number
        // of times, rather than give up on a person for an unknown reason.
        other => retry(other),
    }
}

/// Twilio's refusal is final (a landline, an opted-out number) unless its
/// message names a timeout or an overloaded Twilio.
fn sms_failure_is_transient(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "timeout",
        "timed out",
        "429",
        "too many requests",
        "500",
        "502",
        "503",
        "504",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

fn error_code(object: &serde_json::Map<String, Value>) -> Option<&str> {
    ["errorCode", "error_code"]
        .iter()
        .filter_map(|key| object.get(*key).and_then(Value::as_str))
        .find(|code| !code.is_empty())
}

fn message(object: &serde_json::Map<String, Value>) -> &str {
    object.get("error").and_then(Value::as_str).unwrap_or("")
}

/// When the request rate limit lifts: `Retry-After`, or else the
/// `X-RateLimit-Reset` every answer carries (both RFC 1123 dates).
pub fn rate_limit_ends(headers: &reqwest::header::HeaderMap) -> Option<Timestamp> {
    [reqwest::header::RETRY_AFTER.as_str(), "x-ratelimit-reset"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_http_date)
        })
}

/// Reads an RFC 1123 date as the server writes it (`... 12:00:00 UTC` or
/// `... GMT`).
pub fn parse_http_date(value: &str) -> Option<Timestamp> {
    let value = value.trim();
    let value = value
        .strip_suffix(" UTC")
        .map(|v| format!("{v} GMT"))
        .unwrap_or_else(|| value.to_owned());
    jiff::fmt::rfc2822::parse(&value)
        .ok()
        .map(|zoned| zoned.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> ItemVerdict {
        classify_item(&value)
    }

    fn error(code: &str) -> Value {
        json!({"error": "x", "errorCode": code, "error_code": code})
    }

    #[test]
    fn an_item_with_a_code_is_sent() {
        assert_eq!(
            item(json!({"uuid": "u", "code": "12345678", "expiresAt": "..."})),
            ItemVerdict::Sent {
                already_issued: false
            }
        );
    }

    #[test]
    fn uuid_already_exists_is_sent_and_never_resent() {
        assert_eq!(
            item(error("uuid_already_exists")),
            ItemVerdict::Sent {
                already_issued: true
            }
        );
    }

    #[test]
    fn every_bad_data_code_is_a_permanent_refusal() {
        for code in [
            "unparsable_request",
            "invalid_test_type",
            "unsupported_test_type",
            "missing_date",
            "invalid_date",
            "phone_number_invalid",
        ] {
            assert_eq!(
                item(error(code)),
                ItemVerdict::Rejected {
                    reason: code.to_owned()
                },
                "{code}"
            );
        }
    }

    #[test]
    fn transient_codes_are_retried() {
        for code in [
            "internal_server_error",
            "sms_queue_full",
            "maintenance_mode",
            "brand_new_code",
        ] {
            assert_eq!(
                item(error(code)),
                ItemVerdict::Retry {
                    reason: code.to_owned()
                },
                "{code}"
            );
        }
        assert_eq!(item(error("quota_exceeded")), ItemVerdict::QuotaExceeded);
    }

    #[test]
    fn sms_failure_is_permanent_unless_twilio_was_overloaded() {
        let failure = |message: &str| json!({"error": message, "errorCode": "sms_failure"});

        assert!(matches!(
            item(failure("The 'To' number is not a valid mobile number")),
            ItemVerdict::Rejected { .. }
        ));
        assert!(matches!(
            item(failure("request timed out")),
            ItemVerdict::Retry { .. }
        ));
        assert!(matches!(
            item(failure("Twilio answered 503")),
            ItemVerdict::Retry { .. }
        ));
    }

    #[test]
    fn an_error_code_wins_over_a_code_even_in_a_200() {
        assert!(matches!(
            item(json!({"code": "12345678", "errorCode": "internal_server_error"})),
            ItemVerdict::Retry { .. }
        ));
        assert!(matches!(
            item(json!({"code": "12345678", "error_code": "internal_server_error"})),
            ItemVerdict::Retry { .. }
        ));
    }

    #[test]
    fn an_item_without_code_or_error_is_retried() {
        assert!(matches!(item(json!({})), ItemVerdict::Retry { .. }));
        assert!(matches!(item(json!("text")), ItemVerdict::Retry { .. }));
    }

    #[test]
    fn a_failed_batch_status_still_walks_every_item() {
        let body = json!({
            "codes": [{"code": "11111111"}, error("invalid_date"), {"code": "22222222"}],
            "error": "1 failed, 2 issued", "errorCode": "invalid_date"
        });

        let verdict = classify_batch(400, body.to_string().as_bytes(), 3, None);

        assert_eq!(
            verdict,
            BatchVerdict::Items(vec![
                ItemVerdict::Sent {
                    already_issued: false
                },
                ItemVerdict::Rejected {
                    reason: "invalid_date".to_owned()
                },
                ItemVerdict::Sent {
                    already_issued: false
                },
            ])
        );
    }

    #[test]
    fn a_codes_array_of_the_wrong_length_trusts_no_item() {
        let body = json!({"codes": [{"code": "11111111"}]});

        let verdict = classify_batch(200, body.to_string().as_bytes(), 2, None);

        assert!(matches!(verdict, BatchVerdict::Items(items)
            if items.iter().all(|i| matches!(i, ItemVerdict::Retry { .. }))));
    }

    #[test]
    fn plain_text_429_is_the_rate_limit_with_its_date() {
        let at = parse_http_date("Thu, 03 Dec 2026 12:00:00 UTC");

        let verdict = classify_batch(429, b"Too Many Requests", 3, at);

        assert_eq!(verdict, BatchVerdict::RateLimited { retry_after: at });
        assert_eq!(at.unwrap().to_string(), "2026-12-03T12:00:00Z");
    }

    #[test]
    fn json_429_is_not_the_rate_limit() {
        let body = error("quota_exceeded").to_string();

        let verdict = classify_batch(429, body.as_bytes(), 2, None);

        assert_eq!(
            verdict,
            BatchVerdict::Items(vec![ItemVerdict::QuotaExceeded; 2])
        );
    }

    #[test]
    fn garbled_answers_retry_every_item() {
        for (status, body) in [
            (500, &b"<html>Internal Server Error</html>"[..]),
            (200, &b"{\"codes\": [{\"code\": \"1"[..]),
            (502, &b""[..]),
        ] {
            let verdict = classify_batch(status, body, 2, None);
            assert!(
                matches!(&verdict, BatchVerdict::Items(items)
                    if items.iter().all(|i| matches!(i, ItemVerdict::Retry { .. }))),
                "{status}: {verdict:?}"
            );
        }
    }

    #[test]
    fn a_400_without_error_code_refuses_the_batch() {
        let verdict = classify_batch(400, br#"{"error": "too many codes"}"#, 2, None);

        assert!(matches!(verdict, BatchVerdict::Items(items)
            if items.iter().all(|i| matches!(i, ItemVerdict::Rejected { .. }))));
    }

    #[test]
    fn bad_credentials_and_wrong_urls_are_configuration_faults() {
        assert_eq!(
            classify_batch(401, br#"{"error":"unauthorized"}"#, 1, None),
            BatchVerdict::Unauthorized
        );
        assert_eq!(
            classify_batch(404, b"404 page not found", 1, None),
            BatchVerdict::NotFound { status: 404 }
        );
    }

    #[test]
    fn only_failures_that_may_have_reached_the_server_are_ambiguous() {
        for reason in [
            "verification_timeout",
            "internal_server_error",
            "verification_unreadable_http_502",
            "verification_wrong_item_count",
        ] {
            assert!(is_ambiguous(reason), "{reason}");
        }
        for reason in [
            "verification_connection_failed",
            "sms_queue_full",
            "maintenance_mode",
            "quota_exceeded",
        ] {
            assert!(!is_ambiguous(reason), "{reason}");
        }
    }

    #[test]
    fn the_rate_limit_ends_at_retry_after_or_else_at_the_reset_date() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "x-ratelimit-reset",
            "Thu, 03 Dec 2026 12:01:00 UTC".parse().unwrap(),
        );

        let from_reset = rate_limit_ends(&headers);
        headers.insert(
            "retry-after",
            "Thu, 03 Dec 2026 12:00:30 UTC".parse().unwrap(),
        );
        let from_retry_after = rate_limit_ends(&headers);

        assert_eq!(from_reset.unwrap().to_string(), "2026-12-03T12:01:00Z");
        assert_eq!(
            from_retry_after.unwrap().to_string(),
            "2026-12-03T12:00:30Z"
        );
        assert_eq!(rate_limit_ends(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn http_dates_parse_in_both_spellings() {
        assert!(parse_http_date("Thu, 03 Dec 2026 12:00:00 GMT").is_some());
        assert!(parse_http_date("Thu, 03 Dec 2026 12:00:00 UTC").is_some());
        assert!(parse_http_date("in a minute").is_none());
    }
}
