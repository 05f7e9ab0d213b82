//! The JSON the verification simulator reads and writes, and the error
//! codes it answers with.
//!
//! The real server decodes strictly: a field it does not know, or a value
//! of the wrong JSON type, fails the whole request. Every request type here
//! therefore denies unknown fields. `null` is accepted wherever a value is
//! optional, as the real decoder leaves the field empty then.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// One code to issue: the body of `/api/issue`, or one element of a batch.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct IssueRequest {
    pub(crate) test_type: Option<String>,
    pub(crate) test_date: Option<String>,
    pub(crate) symptom_date: Option<String>,
    /// Minutes from UTC; only the sign is used.
    pub(crate) tz_offset: Option<f64>,
    pub(crate) phone: Option<String>,
    pub(crate) uuid: Option<String>,
    #[serde(rename = "externalIssuerID")]
    pub(crate) external_issuer_id: Option<String>,
    #[serde(rename = "smsTemplateLabel")]
    pub(crate) sms_template_label: Option<String>,
    #[serde(rename = "onlyGenerateSMS")]
    pub(crate) only_generate_sms: Option<bool>,
    #[allow(
        dead_code,
        reason = "accepted so that it is not an unknown field, then ignored"
    )]
    pub(crate) padding: Option<String>,
}

/// The body of `/api/batch-issue`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchIssueRequest {
    pub(crate) codes: Option<Vec<IssueRequest>>,
    #[allow(
        dead_code,
        reason = "accepted so that it is not an unknown field, then ignored"
    )]
    pub(crate) padding: Option<String>,
}

/// The body of `/api/checkcodestatus`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckCodeStatusRequest {
    pub(crate) uuid: Option<String>,
    #[allow(
        dead_code,
        reason = "accepted so that it is not an unknown field, then ignored"
    )]
    pub(crate) padding: Option<String>,
}

/// An issued code as the server reports it. The long code is missing on
/// purpose: the real server only puts it in the SMS.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IssuedCode {
    pub(crate) uuid: String,
    pub(crate) code: String,
    pub(crate) expires_at: String,
    pub(crate) expires_at_timestamp: i64,
    pub(crate) long_expires_at: String,
    pub(crate) long_expires_at_timestamp: i64,
    pub(crate) padding: String,
}

/// A failed code, or a failed request.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
    #[serde(rename = "errorCode")]
    pub(crate) error_code: String,
    /// The deprecated spelling, still sent by the real server.
    #[serde(rename = "error_code")]
    pub(crate) error_code_deprecated: String,
}

/// One element of a batch answer's `codes`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum CodeAnswer {
    Issued(IssuedCode),
    Failed(ErrorBody),
}

/// The answer of `/api/batch-issue`.
#[derive(Debug, Serialize)]
pub(crate) struct BatchIssueAnswer {
    pub(crate) codes: Vec<CodeAnswer>,
    pub(crate) padding: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    #[serde(rename = "errorCode", skip_serializing_if = "Option::is_none")]
    pub(crate) error_code: Option<String>,
}

/// The answer of `/api/checkcodestatus` for a code that exists.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CodeStatus {
    pub(crate) claimed: bool,
    pub(crate) expires_at_timestamp: i64,
    pub(crate) long_expires_at_timestamp: i64,
    pub(crate) padding: String,
}

/// The `errorCode` values the server issues codes with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    UnparsableRequest,
    InternalServerError,
    InvalidTestType,
    UnsupportedTestType,
    MissingDate,
    InvalidDate,
    UuidAlreadyExists,
    MaintenanceMode,
    QuotaExceeded,
    SmsQueueFull,
    PhoneNumberInvalid,
    SmsFailure,
    /// A value the simulator does not know, forced by a test. New values
    /// can appear on the real server, and several of its 400s are
    /// unlabelled, so an unknown value is a 400.
    Other(String),
}

impl ErrorCode {
    pub(crate) fn parse(value: &str) -> ErrorCode {
        match value {
            "unparsable_request" => ErrorCode::UnparsableRequest,
            "internal_server_error" => ErrorCode::InternalServerError,
            "invalid_test_type" => ErrorCode::InvalidTestType,
            "unsupported_test_type" => ErrorCode::UnsupportedTestType,
            "missing_date" => ErrorCode::MissingDate,
            "invalid_date" => ErrorCode::InvalidDate,
            "uuid_already_exists" => ErrorCode::UuidAlreadyExists,
            "maintenance_mode" => ErrorCode::MaintenanceMode,
            "quota_exceeded" => ErrorCode::QuotaExceeded,
            "sms_queue_full" => ErrorCode::SmsQueueFull,
            "phone_number_invalid" => ErrorCode::PhoneNumberInvalid,
            "sms_failure" => ErrorCode::SmsFailure,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            ErrorCode::UnparsableRequest => "unparsable_request",
            ErrorCode::InternalServerError => "internal_server_error",
            ErrorCode::InvalidTestType => "invalid_test_type",
            ErrorCode::UnsupportedTestType => "unsupported_test_type",
            ErrorCode::MissingDate => "missing_date",
            ErrorCode::InvalidDate => "invalid_date",
            ErrorCode::UuidAlreadyExists => "uuid_already_exists",
            ErrorCode::MaintenanceMode => "maintenance_mode",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::SmsQueueFull => "sms_queue_full",
            ErrorCode::PhoneNumberInvalid => "phone_number_invalid",
            ErrorCode::SmsFailure => "sms_failure",
            ErrorCode::Other(other) => other,
        }
    }

    /// The HTTP status the real server pairs with the code.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ErrorCode::UuidAlreadyExists => StatusCode::CONFLICT,
            ErrorCode::MaintenanceMode | ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why one code was not issued.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            error_code: self.code.as_str().to_owned(),
            error_code_deprecated: self.code.as_str().to_owned(),
        }
    }
}
