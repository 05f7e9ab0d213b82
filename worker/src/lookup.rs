//! Twilio Lookup v2 with line type intelligence: is this number textable?
//! Every answer is turned into one of three things the worker acts on: a
//! verdict on the number, a fault worth retrying, or a configuration fault
//! that must stop the worker.

use std::collections::HashSet;
use std::time::Duration;

use canotify_common::{E164, Secret};
use serde::Deserialize;

/// What the lookup says of a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineCheck {
    /// A line type the configuration accepts.
    Textable,
    /// A real number that cannot take the SMS; the reason names the type.
    NotTextable { reason: String },
    /// Twilio says the number does not exist.
    Invalid { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A timeout, connection error, 5xx, 429 or downstream fault.
    #[error("lookup failed, worth retrying: {reason}")]
    Retryable { reason: String },
    /// Credentials refused: nothing will work until the configuration is fixed.
    #[error(
        "Twilio refused the credentials (HTTP {status}); check CANOTIFY_TWILIO_ACCOUNT_SID and CANOTIFY_TWILIO_AUTH_TOKEN"
    )]
    Unauthorized { status: u16 },
}

impl LookupError {
    /// The short code recorded when the retries run out.
    pub fn reason(&self) -> String {
        match self {
            Self::Retryable { reason } => reason.clone(),
            Self::Unauthorized { .. } => "lookup_unauthorized".to_owned(),
        }
    }
}

#[derive(Clone)]
pub struct LookupClient {
    http: reqwest::Client,
    base_url: String,
    account_sid: String,
    auth_token: Secret,
    accepted: HashSet<String>,
}

#[derive(Deserialize)]
struct LookupAnswer {
    valid: Option<bool>,
    validation_errors: Option<Vec<String>>,
    line_type_intelligence: Option<LineTypeIntelligence>,
}

#[derive(Deserialize)]
struct LineTypeIntelligence {
    #[serde(rename = "type")]
    line_type: Option<String>,
    error_code: Option<i64>,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<i64>,
}

impl LookupClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        account_sid: &str,
        auth_token: Secret,
        accepted: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            account_sid: account_sid.to_owned(),
            auth_token,
            accepted: accepted.into_iter().collect(),
        }
    }

    /// Looks a number up once. Retrying is the caller's choice.
    pub async fn lookup(&self, phone: &E164) -> Result<LineCheck, LookupError> {
        let url = format!(
            "{}/v2/PhoneNumbers/{}",
            self.base_url,
            phone.as_str().replace('+', "%2B")
        );
        let response = self
            .http
            .get(url)
            .query(&[("Fields", "line_type_intelligence")])
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .send()
            .await
            .map_err(|err| LookupError::Retryable {
                reason: transport_reason("lookup", &err),
            })?;

        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|err| LookupError::Retryable {
                reason: transport_reason("lookup", &err),
            })?;
        self.classify(status, &body)
    }

    /// Turns an HTTP answer into a verdict.
    pub fn classify(&self, status: u16, body: &[u8]) -> Result<LineCheck, LookupError> {
        match status {
            200 => {}
            401 | 403 => return Err(LookupError::Unauthorized { status }),
            429 => {
                return Err(LookupError::Retryable {
                    reason: "lookup_rate_limited".to_owned(),
                });
            }
            404 => {
                return Ok(LineCheck::Invalid {
                    reason: "lookup_not_found".to_owned(),
                });
            }
            400..=499 => {
                let code = serde_json::from_slice::<TwilioError>(body)
                    .ok()
                    .and_then(|e| e.code);
                return Ok(LineCheck::Invalid {
                    reason: format!("lookup_refused_{}", code.unwrap_or(i64::from(status))),
                });
            }
            _ => {
                return Err(LookupError::Retryable {
                    reason: format!("lookup_http_{status}"),
                });
            }
        }

        // A 200 that is not the expected JSON is a garbled answer: retry.
        let answer: LookupAnswer =
            serde_json::from_slice(body).map_err(|_| LookupError::Retryable {
                reason: "lookup_unreadable_answer".to_owned(),
            })?;

        if answer.valid == Some(false) {
            let errors = answer.validation_errors.unwrap_or_default();
            let first = errors.first().map_or("invalid", String::as_str);
            return Ok(LineCheck::Invalid {
                reason: format!("lookup_{}", first.to_ascii_lowercase()),
            });
        }

        let Some(intel) = answer.line_type_intelligence else {
            return Err(LookupError::Retryable {
                reason: "lookup_no_line_type".to_owned(),
            });
        };
        if let Some(code) = intel.error_code {
            // 60608 is a downstream provider fault; the others (package not
            // enabled, country unsupported, outside coverage) will not change.
            return if code == 60608 {
                Err(LookupError::Retryable {
                    reason: "lookup_provider_error".to_owned(),
                })
            } else {
                Ok(LineCheck::NotTextable {
                    reason: format!("lookup_error_{code}"),
                })
            };
        }

        let line_type = intel.line_type.unwrap_or_else(|| "unknown".to_owned());
        if self.accepted.contains(&line_type) {
            Ok(LineCheck::Textable)
        } else {
            Ok(LineCheck::NotTextable {
                reason: format!("line_type_{line_type}"),
            })
        }
    }
}

/// A reason code for a request that got no HTTP answer.
pub fn transport_reason(what: &str, err: &reqwest::Error) -> String {
    if err.is_timeout() {
        format!("{what}_timeout")
    } else if err.is_connect() {
        format!("{what}_connection_failed")
    } else {
        format!("{what}_transport_error")
    }
}

/// The lookup's own retry schedule, short enough to stay in-process.
pub fn retry_policy() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(3)
        .with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> LookupClient {
        LookupClient::new(
            canotify_common::http::client(Duration::from_secs(1)).unwrap(),
            "http://127.0.0.1:1",
            "AC1",
            Secret::new("t"),
            ["mobile", "nonFixedVoip", "fixedVoip"].map(String::from),
        )
    }

    fn answer(line_type: &str) -> Vec<u8> {
        format!(
            r#"{{"phone_number":"+19165551234","valid":true,"validation_errors":null,
                "line_type_intelligence":{{"type":"{line_type}","carrier_name":"x","error_code":null}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn accepted_line_types_are_textable_and_others_are_not() {
        let client = client();

        assert_eq!(
            client.classify(200, &answer("mobile")).unwrap(),
            LineCheck::Textable
        );
        assert_eq!(
            client.classify(200, &answer("nonFixedVoip")).unwrap(),
            LineCheck::Textable
        );
        assert_eq!(
            client.classify(200, &answer("landline")).unwrap(),
            LineCheck::NotTextable {
                reason: "line_type_landline".to_owned()
            }
        );
        assert_eq!(
            client.classify(200, &answer("someNewType")).unwrap(),
            LineCheck::NotTextable {
                reason: "line_type_someNewType".to_owned()
            }
        );
    }

    #[test]
    fn an_invalid_number_is_a_200_with_valid_false() {
        let body =
            br#"{"valid":false,"validation_errors":["TOO_SHORT"],"line_type_intelligence":null}"#;

        assert_eq!(
            client().classify(200, body).unwrap(),
            LineCheck::Invalid {
                reason: "lookup_too_short".to_owned()
            }
        );
    }

    #[test]
    fn package_errors_inside_a_200_are_classified() {
        let body = |code: i64| {
            format!(
                r#"{{"valid":true,"line_type_intelligence":{{"type":null,"error_code":{code}}}}}"#
            )
        };

        assert!(matches!(
            client().classify(200, body(60608).as_bytes()),
            Err(LookupError::Retryable { .. })
        ));
        assert_eq!(
            client().classify(200, body(60607).as_bytes()).unwrap(),
            LineCheck::NotTextable {
                reason: "lookup_error_60607".to_owned()
            }
        );
    }

    #[test]
    fn faults_are_retryable_and_bad_credentials_are_not() {
        let client = client();

        assert!(matches!(
            client.classify(500, b"oops"),
            Err(LookupError::Retryable { .. })
        ));
        assert!(matches!(
            client.classify(429, b"{}"),
            Err(LookupError::Retryable { .. })
        ));
        assert!(matches!(
            client.classify(200, b"<html>busy</html>"),
            Err(LookupError::Retryable { .. })
        ));
        assert!(matches!(
            client.classify(401, br#"{"code":20003}"#),
            Err(LookupError::Unauthorized { status: 401 })
        ));
        assert!(matches!(
            client.classify(400, br#"{"code":20001}"#),
            Ok(LineCheck::Invalid { .. })
        ));
    }
}
