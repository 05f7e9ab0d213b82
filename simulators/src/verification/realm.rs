//! The simulated realm: its settings, the codes it has issued, the SMS it
//! has sent, its request-rate window and its daily quota.
//!
//! A realm is used under one lock and never across an `.await`, so a uuid
//! is checked and saved in one step: two requests racing with the same
//! uuid issue one code and send one SMS.

use std::collections::HashMap;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use phonenumber::Mode;
use phonenumber::country::Id;

use super::SmsRecord;
use super::VerificationConfig;
use super::wire::{ErrorCode, Failure, IssueRequest, IssuedCode};
use crate::http_util;

/// The test types the real server knows.
const TEST_TYPES: [&str; 4] = ["confirmed", "likely", "negative", "user-report"];

/// How far back a test or symptom date may be, in days before UTC today.
const MAX_DATE_AGE_DAYS: i64 = 28;

/// How long a short code lives, the real server's default.
const CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How long the long code (the one in the SMS link) lives.
const LONG_CODE_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest `externalIssuerID` the real server's column takes.
const MAX_EXTERNAL_ISSUER_ID: usize = 255;

/// The window of the request rate limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The window of the daily quota.
const QUOTA_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) struct Realm {
    pub(crate) latency: Duration,
    pub(crate) item_error_rate: f64,
    pub(crate) rate_limit_per_minute: Option<u32>,
    pub(crate) daily_quota: Option<u64>,
    pub(crate) maintenance: bool,
    pub(crate) allow_bulk: bool,
    require_date: bool,
    enabled_test_types: Vec<String>,

    /// Issued codes by uuid. Never purged: the real server forgets a uuid
    /// about 14 days after its code expires, longer than any simulator run.
    codes: HashMap<String, StoredCode>,
    pub(crate) ledger: Vec<SmsRecord>,
    /// Errors forced for an E.164 phone.
    pub(crate) forced: HashMap<String, ErrorCode>,
    /// Authenticated issue calls received.
    pub(crate) requests: u64,
    /// Authenticated `/api/checkcodestatus` calls received.
    pub(crate) status_checks: u64,

    rate: Window,
    quota: Window,
    pub(crate) rng: fastrand::Rng,
}

/// What the realm remembers of an issued code.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoredCode {
    pub(crate) expires_at: Timestamp,
    pub(crate) long_expires_at: Timestamp,
}

/// A fixed window that opens with the first use after the previous one
/// closed. Opening on use rather than on the clock's minute keeps a burst
/// from straddling two windows by accident.
#[derive(Default)]
struct Window {
    opened: Option<Timestamp>,
    used: u64,
}

impl Window {
    /// Moves to a new window if the current one has closed, and returns
    /// when the current one closes.
    fn roll(&mut self, now: Timestamp, length: Duration) -> Timestamp {
        let closes = |opened: Timestamp| opened + length;
        match self.opened {
            Some(opened) if now < closes(opened) => closes(opened),
            _ => {
                self.opened = Some(now);
                self.used = 0;
                closes(now)
            }
        }
    }
}

/// The request rate limit as reported to one caller.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateStatus {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) reset: Timestamp,
    /// Whether the request was refused for being over the limit.
    pub(crate) limited: bool,
}

impl Realm {
    pub(crate) fn new(config: &VerificationConfig) -> Self {
        Realm {
            latency: config.latency,
            item_error_rate: config.item_error_rate,
            rate_limit_per_minute: config.rate_limit_per_minute,
            daily_quota: config.daily_quota,
            maintenance: config.maintenance,
            allow_bulk: config.allow_bulk,
            require_date: config.require_date,
            enabled_test_types: config
                .enabled_test_types
                .iter()
                .map(|t| t.to_lowercase())
                .collect(),
            codes: HashMap::new(),
            ledger: Vec::new(),
            forced: HashMap::new(),
            requests: 0,
            status_checks: 0,
            rate: Window::default(),
            quota: Window::default(),
            rng: fastrand::Rng::with_seed(config.seed),
        }
    }

    /// Counts one request against the per-minute limit.
    ///
    /// A realm without a limit still reports one (`u32::MAX`) so that every
    /// authenticated answer carries the headers, as the real server's do.
    pub(crate) fn admit(&mut self, now: Timestamp) -> RateStatus {
        let reset = self.rate.roll(now, RATE_WINDOW);
        let limit = self.rate_limit_per_minute.unwrap_or(u32::MAX);

        let limited = self.rate.used >= u64::from(limit);
        if !limited {
            self.rate.used += 1;
        }
        let remaining = u64::from(limit).saturating_sub(self.rate.used);

        RateStatus {
            limit,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset,
            limited,
        }
    }

    pub(crate) fn code(&self, uuid: &str) -> Option<StoredCode> {
        self.codes.get(uuid).copied()
    }

    /// Runs one code through the real server's checks, in its order, and
    /// issues it if all pass. Nothing is saved, sent or charged to the
    /// quota for a code that fails before the quota step.
    pub(crate) fn issue(
        &mut self,
        request: &IssueRequest,
        now: Timestamp,
    ) -> Result<IssuedCode, Failure> {
        if self.maintenance {
            return Err(Failure::new(
                ErrorCode::MaintenanceMode,
                "the server is in maintenance mode, try again later",
            ));
        }

        let (test_date, symptom_date) = self.check_dates(request, now)?;

        // The server only parses the phone; whether it can take an SMS is
        // Twilio's business when the message is sent.
        let phone = match request.phone.as_deref().unwrap_or_default().trim() {
            "" => None,
            raw => Some(e164(raw).ok_or_else(|| {
                Failure::new(ErrorCode::PhoneNumberInvalid, "phone number is not valid")
            })?),
        };

        match request.sms_template_label.as_deref().unwrap_or_default() {
            "" | "default" => {}
            _ => {
                return Err(Failure::new(
                    ErrorCode::SmsFailure,
                    "unknown SMS template label",
                ));
            }
        }

        let uuid = match request.uuid.as_deref().unwrap_or_default() {
            "" => random_uuid(&mut self.rng),
            given if is_canonical_uuid(given) => given.to_owned(),
            _ => {
                return Err(Failure::new(
                    ErrorCode::InternalServerError,
                    "uuid is not a valid UUID",
                ));
            }
        };
        if self.codes.contains_key(&uuid) {
            return Err(Failure::new(
                ErrorCode::UuidAlreadyExists,
                "a code was already issued with this uuid",
            ));
        }

        let test_type = request
            .test_type
            .as_deref()
            .unwrap_or_default()
            .to_lowercase();
        if !TEST_TYPES.contains(&test_type.as_str()) {
            return Err(Failure::new(
                ErrorCode::InvalidTestType,
                "invalid test type",
            ));
        }
        if !self.enabled_test_types.contains(&test_type) {
            return Err(Failure::new(
                ErrorCode::UnsupportedTestType,
                "test type is not enabled for this realm",
            ));
        }

        // Injected faults come before the quota so that a test can tell a
        // simulated failure from a spent quota.
        if let Some(code) = phone.as_ref().and_then(|p| self.forced.get(p)) {
            return Err(Failure::new(
                code.clone(),
                format!("simulated {}", code.as_str()),
            ));
        }
        if self.rng.f64() < self.item_error_rate {
            return Err(Failure::new(
                ErrorCode::InternalServerError,
                "simulated internal error",
            ));
        }

        if let Some(quota) = self.daily_quota {
            self.quota.roll(now, QUOTA_WINDOW);
            if self.quota.used >= quota {
                return Err(Failure::new(
                    ErrorCode::QuotaExceeded,
                    "the realm has used its daily quota",
                ));
            }
            self.quota.used += 1;
        }

        // Past the quota, as in the real server, where this is the
        // database refusing the row.
        let issuer = request.external_issuer_id.as_deref().unwrap_or_default();
        if issuer.chars().count() > MAX_EXTERNAL_ISSUER_ID {
            return Err(Failure::new(
                ErrorCode::InternalServerError,
                "failed to save the code",
            ));
        }

        let stored = StoredCode {
            expires_at: now + CODE_LIFETIME,
            long_expires_at: now + LONG_CODE_LIFETIME,
        };
        self.codes.insert(uuid.clone(), stored);

        // A code issued with no phone, or only to get the SMS text back,
        // is never texted.
        let sends = !request.only_generate_sms.unwrap_or(false);
        if let Some(phone) = phone.filter(|_| sends) {
            self.ledger.push(SmsRecord {
                uuid: uuid.clone(),
                phone,
                test_date: test_date.map(|d| d.to_string()),
                symptom_date: symptom_date.map(|d| d.to_string()),
                sent_at: now.to_string(),
            });
        }

        Ok(IssuedCode {
            uuid,
            code: format!("{:08}", self.rng.u32(0..100_000_000)),
            expires_at: http_util::rfc1123(stored.expires_at),
            expires_at_timestamp: stored.expires_at.as_second(),
            long_expires_at: http_util::rfc1123(stored.long_expires_at),
            long_expires_at_timestamp: stored.long_expires_at.as_second(),
            padding: http_util::random_padding(&mut self.rng),
        })
    }

    /// Parses and bounds the test and symptom dates.
    fn check_dates(
        &self,
        request: &IssueRequest,
        now: Timestamp,
    ) -> Result<(Option<Date>, Option<Date>), Failure> {
        let test_date = parse_date(request.test_date.as_deref())?;
        let symptom_date = parse_date(request.symptom_date.as_deref())?;

        if test_date.is_none() && symptom_date.is_none() {
            if self.require_date {
                return Err(Failure::new(
                    ErrorCode::MissingDate,
                    "a test date or a symptom date is required",
                ));
            }
            return Ok((None, None));
        }

        // A caller west of UTC can still be on the day before UTC's, so a
        // negative offset lets the window start one day earlier.
        let today = TimeZone::UTC.to_datetime(now).date();
        let mut earliest = today - MAX_DATE_AGE_DAYS.days();
        if request.tz_offset.unwrap_or(0.0) < 0.0 {
            earliest -= 1.day();
        }
        for date in [test_date, symptom_date].into_iter().flatten() {
            if date < earliest || date > today {
                return Err(Failure::new(
                    ErrorCode::InvalidDate,
                    format!("date must be between {earliest} and {today}"),
                ));
            }
        }

        Ok((test_date, symptom_date))
    }
}

/// Reads `YYYY-MM-DD`; an absent or empty date is `None`.
fn parse_date(value: Option<&str>) -> Result<Option<Date>, Failure> {
    let value = value.unwrap_or_default();
    if value.is_empty() {
        return Ok(None);
    }
    let unparsable = || Failure::new(ErrorCode::UnparsableRequest, "dates must be YYYY-MM-DD");

    // Checked by hand: a general date parser accepts forms the real
    // server refuses, such as a time after the date.
    let bytes = value.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shaped {
        return Err(unparsable());
    }

    let year: i16 = value[0..4].parse().map_err(|_| unparsable())?;
    let month: i8 = value[5..7].parse().map_err(|_| unparsable())?;
    let day: i8 = value[8..10].parse().map_err(|_| unparsable())?;
    Date::new(year, month, day)
        .map(Some)
        .map_err(|_| unparsable())
}

/// The E.164 form of a phone, read with the realm's default country (US).
pub(crate) fn e164(raw: &str) -> Option<String> {
    phonenumber::parse(Some(Id::US), raw)
        .ok()
        .map(|number| number.format().mode(Mode::E164).to_string())
}

/// Whether `value` is a UUID written the one way the server accepts:
/// lowercase hex, hyphenated 8-4-4-4-12.
fn is_canonical_uuid(value: &str) -> bool {
    uuid::Uuid::try_parse(value).is_ok_and(|parsed| parsed.hyphenated().to_string() == value)
}

/// A random (version 4) UUID, from the realm's seeded generator so a run
/// can be replayed.
fn random_uuid(rng: &mut fastrand::Rng) -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| rng.u8(..));
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_lowercase_uuids_are_accepted() {
        assert!(is_canonical_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!is_canonical_uuid("0F8FAD5B-D9CB-469F-A165-70867728950E"));
        assert!(!is_canonical_uuid("0f8fad5bd9cb469fa16570867728950e"));
        assert!(!is_canonical_uuid("{0f8fad5b-d9cb-469f-a165-70867728950e}"));
        assert!(!is_canonical_uuid("case-42"));
    }

    #[test]
    fn generated_uuids_are_canonical_version_4() {
        let mut rng = fastrand::Rng::with_seed(7);

        let generated = random_uuid(&mut rng);

        assert!(is_canonical_uuid(&generated), "{generated}");
        assert_eq!(generated.as_bytes()[14], b'4');
    }

    #[test]
    fn dates_must_be_exactly_year_month_day() {
        assert_eq!(
            parse_date(Some("2026-02-28")).unwrap(),
            Some(jiff::civil::date(2026, 2, 28))
        );
        assert_eq!(parse_date(Some("")).unwrap(), None);
        assert_eq!(parse_date(None).unwrap(), None);
        for bad in [
            "2026-2-28",
            "2026/02/28",
            "2026-02-30",
            "2026-02-28T00:00:00",
            "+026-02-28",
        ] {
            let failure = parse_date(Some(bad)).unwrap_err();
            assert_eq!(failure.code, ErrorCode::UnparsableRequest, "{bad}");
        }
    }

    #[test]
    fn a_window_stays_open_for_its_length_then_starts_over() {
        let start: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let mut window = Window::default();

        let first = window.roll(start, RATE_WINDOW);
        window.used = 5;
        let same = window.roll(start + Duration::from_secs(59), RATE_WINDOW);
        let next = window.roll(start + Duration::from_secs(60), RATE_WINDOW);

        assert_eq!(first, same);
        assert_eq!(next, start + Duration::from_secs(120));
        assert_eq!(window.used, 0);
    }
}
