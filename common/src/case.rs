//! The case as it travels: a `CheckRequest` goes from the producer to a
//! worker, a `CaseResult` from the worker to the writer. Both carry only what
//! the next step needs, and the types here validate what they can.

use std::fmt;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

/// The longest case id accepted; longer ids are refused before they reach
/// the broker or the warehouse.
pub const MAX_CASE_ID_LEN: usize = 128;

/// The health department's identifier for one case (one test of one person).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CaseId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaseIdError {
    #[error("case id is empty")]
    Empty,
    #[error("case id is longer than {MAX_CASE_ID_LEN} bytes")]
    TooLong,
    #[error("case id contains a control character")]
    ControlCharacter,
}

impl CaseId {
    pub fn new(id: impl Into<String>) -> Result<Self, CaseIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(CaseIdError::Empty);
        }
        if id.len() > MAX_CASE_ID_LEN {
            return Err(CaseIdError::TooLong);
        }
        if id.chars().any(char::is_control) {
            return Err(CaseIdError::ControlCharacter);
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CaseId {
    type Error = CaseIdError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl From<CaseId> for String {
    fn from(id: CaseId) -> Self {
        id.0
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of test the verification server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestType {
    Confirmed,
    Likely,
    Negative,
    UserReport,
}

impl TestType {
    /// Reads a test type as a health department writes it: any case, with
    /// surrounding spaces. `None` for anything the server would refuse.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "confirmed" => Some(Self::Confirmed),
            "likely" => Some(Self::Likely),
            "negative" => Some(Self::Negative),
            "user-report" => Some(Self::UserReport),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Likely => "likely",
            Self::Negative => "negative",
            Self::UserReport => "user-report",
        }
    }
}

/// Where a case stands in canotify's outcome table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Claimed by a producer and published; no final outcome yet.
    Queued,
    /// The verification server issued a code and texted it (now or earlier).
    Sent,
    /// The phone number cannot be a real number.
    InvalidPhone,
    /// A real number that cannot take an SMS (a landline, a pager...).
    NotTextable,
    /// The same person was already texted for this infection.
    Duplicate,
    /// The verification server refused the case for good.
    Rejected,
    /// Every attempt failed on a fault that might have passed.
    Failed,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Sent,
        Status::InvalidPhone,
        Status::NotTextable,
        Status::Duplicate,
        Status::Rejected,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::InvalidPhone => "invalid_phone",
            Self::NotTextable => "not_textable",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Every status but `queued` ends the case.
    pub fn is_final(self) -> bool {
        self != Self::Queued
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One case to check and text: the body of a message on the checks queue.
/// The phone and test type are kept as the warehouse holds them; the worker
/// validates them, so a bad row becomes a recorded outcome there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub case_id: CaseId,
    pub phone: Option<String>,
    pub test_date: Option<Date>,
    pub symptom_date: Option<Date>,
    pub test_type: Option<String>,
}

/// What happened to one case: the body of a message on the results queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseResult {
    pub case_id: CaseId,
    pub status: Status,
    /// A short machine-readable code saying why, for every status but `sent`
    /// (and for `sent` when the code had been issued earlier).
    pub reason: Option<String>,
    pub verification_uuid: Option<String>,
    pub attempts: u32,
    pub duplicate_of: Option<CaseId>,
    pub finished_at: jiff::Timestamp,
}

impl CaseResult {
    pub fn new(case_id: CaseId, status: Status, attempts: u32) -> Self {
        Self {
            case_id,
            status,
            reason: None,
            verification_uuid: None,
            attempts,
            duplicate_of: None,
            finished_at: jiff::Timestamp::now(),
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn with_uuid(mut self, uuid: impl Into<String>) -> Self {
        self.verification_uuid = Some(uuid.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_id_refuses_empty_long_and_control_characters() {
        assert_eq!(CaseId::new(""), Err(CaseIdError::Empty));
        assert_eq!(CaseId::new("x".repeat(129)), Err(CaseIdError::TooLong));
        assert_eq!(CaseId::new("a\u{0}b"), Err(CaseIdError::ControlCharacter));
        assert_eq!(
            CaseId::new("CA-2026-000123").unwrap().as_str(),
            "CA-2026-000123"
        );
    }

    #[test]
    fn test_type_reads_any_case_and_refuses_unknown_kinds() {
        assert_eq!(TestType::parse(" Confirmed "), Some(TestType::Confirmed));
        assert_eq!(TestType::parse("USER-REPORT"), Some(TestType::UserReport));
        assert_eq!(TestType::parse("pcr-rapid"), None);
        assert_eq!(TestType::parse(""), None);
    }

    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("unknown"), None);
    }

    #[test]
    fn check_request_with_an_unknown_field_is_refused() {
        let body = r#"{"case_id":"1","phone":null,"test_date":null,"symptom_date":null,"test_type":null,"extra":1}"#;

        let parsed = serde_json::from_str::<CheckRequest>(body);

        assert!(parsed.is_err());
    }
}
