//! The warehouse: where cases come from and where outcomes go back. The
//! producer claims pending cases here; the writer records outcomes here. One
//! trait, so the producer and the writer do not know which database they
//! talk to; PostgreSQL is the implementation in this crate.
//!
//! One text per person is decided here, when the producer claims: of two
//! cases whose phones normalise to the same number and whose dates lie
//! within the window, only one is ever claimed for texting at a time. While
//! the first is in flight the second waits unclaimed; once the first is sent
//! the second is recorded `duplicate`; if the first ends any other way the
//! second is texted on its own. The claim runs under a lock, so two
//! producers cannot both claim one person, and workers never see two cases
//! of one person at once.

mod postgres;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use jiff::civil::Date;

pub use postgres::{NewCase, OutcomeRow, PostgresWarehouse};

use crate::phone::Region;
use crate::{CaseId, CaseResult, CheckRequest, E164, Status};

/// The reason recorded on a case left out because its person was texted.
pub const DUPLICATE_REASON: &str = "same_person_within_window";

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("cannot reach PostgreSQL at {address}")]
    Connect {
        address: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL at {address} did not complete a connection within {after:?}")]
    ConnectTimeout {
        address: String,
        after: std::time::Duration,
    },
    #[error(
        "schema name {0:?} must be 1 to 63 lower-case letters, digits or '_', not starting with a digit"
    )]
    BadSchema(String),
    #[error("database query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("the warehouse holds a value canotify cannot read: {0}")]
    BadData(String),
}

impl WarehouseError {
    /// A deadlock or serialisation failure: the statement lost a race and
    /// can simply run again.
    pub fn is_conflict(&self) -> bool {
        let Self::Query(err) = self else {
            return false;
        };
        err.code().is_some_and(|code| {
            *code == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                || *code == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
        })
    }

    /// Whether trying again later may succeed (the database was away) rather
    /// than failing the same way (a bad schema name, a broken query).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout { .. } => true,
            Self::Query(err) => err.is_closed() || err.as_db_error().is_none(),
            Self::BadSchema(_) | Self::BadData(_) => false,
        }
    }
}

/// What the producer asks for: the next page of pending cases.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// Only cases whose id sorts after this one (keyset paging).
    pub after: Option<CaseId>,
    pub limit: usize,
    /// A claim older than this is taken again.
    pub claim_age: Duration,
    /// Two cases of one phone this many days apart or fewer are one infection.
    pub window_days: u32,
    pub region: Region,
}

/// One page of claimed work.
#[derive(Debug, Default)]
pub struct ClaimedPage {
    /// Newly claimed cases, to publish now.
    pub claimed: Vec<CheckRequest>,
    /// Cases recorded `duplicate` in this page.
    pub duplicates: usize,
    /// Cases left unclaimed because another case of the same person is in
    /// flight; a later pass takes them.
    pub deferred: usize,
    /// Rows canotify cannot carry (an unusable case id or date), recorded
    /// `rejected` with the reason.
    pub refused: usize,
    /// The last case id examined, to pass as `after` for the next page;
    /// `None` when the page was the last.
    pub next: Option<CaseId>,
}

/// Counts of cases by where they stand.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeCounts {
    /// Cases with no outcome row yet.
    pub pending: u64,
    pub by_status: HashMap<String, u64>,
}

impl OutcomeCounts {
    pub fn get(&self, status: Status) -> u64 {
        self.by_status.get(status.as_str()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.pending + self.by_status.values().sum::<u64>()
    }

    /// Cases with no final outcome: never claimed, or claimed and in flight.
    pub fn unresolved(&self) -> u64 {
        self.pending + self.get(Status::Queued)
    }
}

/// The warehouse as the producer and writer see it.
pub trait Warehouse: Send + Sync + 'static {
    /// Creates canotify's tables and views if they are missing.
    fn migrate(&self) -> impl Future<Output = Result<(), WarehouseError>> + Send;

    /// Claims the next page of pending cases, recording duplicates as it goes.
    fn claim_page(
        &self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<ClaimedPage, WarehouseError>> + Send;

    /// Marks claims whose messages the broker confirmed.
    fn mark_published(
        &self,
        cases: &[CaseId],
    ) -> impl Future<Output = Result<(), WarehouseError>> + Send;

    /// Gives back claims whose messages could not be published, so the next
    /// pass takes them again.
    fn release_claims(
        &self,
        cases: &[CaseId],
    ) -> impl Future<Output = Result<(), WarehouseError>> + Send;

    /// Records final outcomes in one statement. A `sent` outcome is never
    /// replaced by another status, and an outcome recorded twice changes
    /// nothing the second time.
    fn record_outcomes(
        &self,
        results: &[CaseResult],
    ) -> impl Future<Output = Result<(), WarehouseError>> + Send;

    fn outcome_counts(&self) -> impl Future<Output = Result<OutcomeCounts, WarehouseError>> + Send;

    /// Takes cases back for another round after an operator asked for it,
    /// under the same rule of one text per person as a claim: a case whose
    /// person was texted meanwhile within `window_days` is recorded
    /// `duplicate` instead. Answers in the order of `cases`.
    fn reopen(
        &self,
        cases: &[CaseId],
        window_days: u32,
    ) -> impl Future<Output = Result<Vec<Reopened>, WarehouseError>> + Send;
}

/// What became of one case an operator asked to send round again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reopened {
    /// Claimed again: it may go back to the checks queue.
    Claimed,
    /// Another case of the same person was sent within the window:
    /// recorded `duplicate` of that case instead.
    Duplicate { of: CaseId },
    /// Another case of the same person is in flight; nothing changed.
    Waiting,
    /// Its outcome is final and not `failed`; nothing changed.
    Final(Status),
    /// The outcome table has no row for it; the producer has never claimed
    /// it and will in its own time.
    Unknown,
}

/// A case as the claim step reads it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub request: CheckRequest,
    pub phone: Option<E164>,
    pub episode_date: Option<Date>,
}

impl Candidate {
    pub fn new(request: CheckRequest, region: Region) -> Self {
        let phone = request
            .phone
            .as_deref()
            .and_then(|raw| E164::normalize(raw, region).ok());
        let episode_date = request.test_date.or(request.symptom_date);
        Self {
            request,
            phone,
            episode_date,
        }
    }
}

/// A case of the same phone that already holds the person's text: claimed
/// (in flight) or sent.
#[derive(Clone, Debug)]
pub struct Texting {
    pub case_id: CaseId,
    pub phone: E164,
    pub episode_date: Date,
    pub status: Status,
}

/// What the claim step does with one candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Claim,
    Duplicate { of: CaseId },
    Defer,
}

/// Decides, in order, what to do with each candidate, given the cases of the
/// same phones already claimed or sent. Candidates claimed earlier in the
/// list count as in flight for the later ones.
pub fn plan_claims(
    candidates: &[Candidate],
    texting: Vec<Texting>,
    window_days: u32,
) -> Vec<Decision> {
    let mut by_phone: HashMap<E164, Vec<Texting>> = HashMap::new();
    for entry in texting {
        by_phone.entry(entry.phone.clone()).or_default().push(entry);
    }

    candidates
        .iter()
        .map(|candidate| {
            let (Some(phone), Some(date)) = (&candidate.phone, candidate.episode_date) else {
                return Decision::Claim;
            };
            let entries = by_phone.entry(phone.clone()).or_default();
            let near: Vec<&Texting> = entries
                .iter()
                .filter(|t| t.case_id != candidate.request.case_id)
                .filter(|t| days_apart(t.episode_date, date) <= i64::from(window_days))
                .collect();

            if let Some(sent) = near.iter().find(|t| t.status == Status::Sent) {
                return Decision::Duplicate {
                    of: sent.case_id.clone(),
                };
            }
            if !near.is_empty() {
                return Decision::Defer;
            }
            entries.push(Texting {
                case_id: candidate.request.case_id.clone(),
                phone: phone.clone(),
                episode_date: date,
                status: Status::Queued,
            });
            Decision::Claim
        })
        .collect()
}

fn days_apart(a: Date, b: Date) -> i64 {
    let span = a.until(b).unwrap_or_default();
    // `until` between two dates counts days only by default.
    i64::from(span.get_days()).abs()
}

/// Checks a schema name and quotes it for use in SQL text. Only the schema
/// name is ever put into SQL text; every value is a bound parameter.
pub fn quote_schema(schema: &str) -> Result<String, WarehouseError> {
    let mut chars = schema.chars();
    let valid = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(WarehouseError::BadSchema(schema.to_owned()));
    }
    Ok(format!("\"{schema}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, phone: &str, date: &str) -> Candidate {
        let request = CheckRequest {
            case_id: CaseId::new(id).unwrap(),
            phone: Some(phone.to_owned()),
            test_date: Some(date.parse().unwrap()),
            symptom_date: None,
            test_type: Some("confirmed".to_owned()),
        };
        Candidate::new(request, Region::US)
    }

    fn texting(id: &str, phone: &str, date: &str, status: Status) -> Texting {
        Texting {
            case_id: CaseId::new(id).unwrap(),
            phone: E164::normalize(phone, Region::US).unwrap(),
            episode_date: date.parse().unwrap(),
            status,
        }
    }

    #[test]
    fn two_tests_of_one_person_in_one_page_claim_only_the_first() {
        let candidates = [
            candidate("a", "(916) 555-1234", "2026-11-20"),
            candidate("b", "+1 916-555-1234", "2026-11-22"),
        ];

        let plan = plan_claims(&candidates, vec![], 14);

        assert_eq!(plan, vec![Decision::Claim, Decision::Defer]);
    }

    #[test]
    fn a_case_whose_person_was_sent_is_a_duplicate_of_that_case() {
        let candidates = [candidate("b", "9165551234", "2026-11-22")];
        let sent = texting("a", "9165551234", "2026-11-10", Status::Sent);

        let plan = plan_claims(&candidates, vec![sent], 14);

        assert_eq!(
            plan,
            vec![Decision::Duplicate {
                of: CaseId::new("a").unwrap()
            }]
        );
    }

    #[test]
    fn a_reinfection_outside_the_window_is_texted_again() {
        let candidates = [candidate("b", "9165551234", "2026-11-25")];
        let sent = texting("a", "9165551234", "2026-11-10", Status::Sent);

        let plan = plan_claims(&candidates, vec![sent], 14);

        assert_eq!(plan, vec![Decision::Claim]);
    }

    #[test]
    fn a_case_waits_while_its_person_is_in_flight() {
        let candidates = [candidate("b", "9165551234", "2026-11-12")];
        let queued = texting("a", "9165551234", "2026-11-10", Status::Queued);

        let plan = plan_claims(&candidates, vec![queued], 14);

        assert_eq!(plan, vec![Decision::Defer]);
    }

    #[test]
    fn a_stale_claim_of_the_candidate_itself_does_not_block_it() {
        let candidates = [candidate("a", "9165551234", "2026-11-10")];
        let own_claim = texting("a", "9165551234", "2026-11-10", Status::Queued);

        let plan = plan_claims(&candidates, vec![own_claim], 14);

        assert_eq!(plan, vec![Decision::Claim]);
    }

    #[test]
    fn different_people_and_unparseable_phones_are_always_claimed() {
        let candidates = [
            candidate("a", "9165551234", "2026-11-10"),
            candidate("b", "9165551235", "2026-11-10"),
            candidate("c", "not a phone", "2026-11-10"),
            candidate("d", "not a phone", "2026-11-10"),
        ];

        let plan = plan_claims(&candidates, vec![], 14);

        assert_eq!(plan, vec![Decision::Claim; 4]);
    }

    #[test]
    fn the_window_counts_whole_days_either_way() {
        assert_eq!(
            days_apart("2026-11-10".parse().unwrap(), "2026-11-24".parse().unwrap()),
            14
        );
        assert_eq!(
            days_apart("2026-11-24".parse().unwrap(), "2026-11-10".parse().unwrap()),
            14
        );
        assert_eq!(
            days_apart("2026-02-20".parse().unwrap(), "2026-03-10".parse().unwrap()),
            18
        );
    }

    #[test]
    fn schema_names_are_checked_before_they_reach_sql() {
        assert_eq!(quote_schema("canotify_1").unwrap(), "\"canotify_1\"");
        assert!(quote_schema("Bad").is_err());
        assert!(quote_schema("x\"; DROP SCHEMA public; --").is_err());
        assert!(quote_schema("1abc").is_err());
        assert!(quote_schema("").is_err());
    }
}
