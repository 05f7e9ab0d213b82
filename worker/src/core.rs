//! The worker's core, the middle of producer -> worker -> writer: given
//! cases, decide what happens to each. A case is checked on its own
//! (phone, test type, line type), then textable cases are issued together
//! in batches of at most ten. The consume loop around this is thin, so tests
//! drive these functions directly.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, Retryable};
use canotify_common::phone::Region;
use canotify_common::verification_uuid;
use canotify_common::{CaseResult, CheckRequest, E164, Secret, Status, TestType, timezone};
use futures_util::future::join_all;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, warn};

use crate::lookup::{self, LineCheck, LookupClient, LookupError};
use crate::verification::{BatchVerdict, IssueRequest, ItemVerdict, MAX_BATCH, VerificationClient};

/// The longest a worker waits on one rate-limit answer before asking again.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// How many rate-limit answers one batch accepts before its cases go back
/// to the queue.
const MAX_RATE_LIMITED_ROUNDS: u32 = 30;

/// What the worker needs to know besides its two clients.
#[derive(Clone, Debug)]
pub struct Settings {
    pub uuid_key: Secret,
    pub time_zone: TimeZone,
    pub region: Region,
    pub sms_template_label: Option<String>,
    /// Deliveries of one case before it is recorded `failed`.
    pub max_attempts: u32,
    pub lookup_concurrency: usize,
}

/// One case as it arrives, with the number of this attempt (1 for the first).
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    pub request: CheckRequest,
    pub attempt: u32,
}

/// What becomes of one case.
#[derive(Clone, Debug, PartialEq)]
pub enum Disposition {
    /// A final outcome, for the writer.
    Done(CaseResult),
    /// Not finished: send it round again as attempt `next_attempt`.
    Retry {
        request: CheckRequest,
        next_attempt: u32,
        reason: String,
    },
}

impl Disposition {
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Done(result) => Some(result.status),
            Self::Retry { .. } => None,
        }
    }
}

/// A case that passed every check and waits to be issued.
#[derive(Clone, Debug)]
pub struct Textable {
    pub incoming: Incoming,
    pub issue: IssueRequest,
}

/// The result of checking one case.
#[derive(Clone, Debug)]
pub enum Checked {
    Textable(Box<Textable>),
    Finished(Disposition),
}

/// A fault that no retry can fix: the worker must stop taking work.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(
        "the verification server refused the API key (HTTP 401); check CANOTIFY_VERIFICATION_API_KEY and the realm's IP allow-list"
    )]
    VerificationUnauthorized,
    #[error(
        "the verification server has no batch-issue endpoint at the configured URL (HTTP {status}); check CANOTIFY_VERIFICATION_URL"
    )]
    VerificationNotFound { status: u16 },
}

pub struct Worker {
    lookup: LookupClient,
    verification: VerificationClient,
    settings: Settings,
    lookup_permits: Arc<Semaphore>,
    rate_limited_until: Mutex<Option<Timestamp>>,
}

impl Worker {
    pub fn new(lookup: LookupClient, verification: VerificationClient, settings: Settings) -> Self {
        let permits = settings.lookup_concurrency.max(1);
        Self {
            lookup,
            verification,
            settings,
            lookup_permits: Arc::new(Semaphore::new(permits)),
            rate_limited_until: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Checks every case, then issues the textable ones in batches of ten.
    /// Answers in the order of `cases`.
    pub async fn handle_batch(&self, cases: Vec<Incoming>) -> Result<Vec<Disposition>, Fatal> {
        let checked = join_all(cases.iter().map(|case| self.check(case))).await;

        let mut answers: Vec<Option<Disposition>> = vec![None; cases.len()];
        let mut textable = Vec::new();
        for (index, checked) in checked.into_iter().enumerate() {
            match checked? {
                Checked::Finished(disposition) => answers[index] = Some(disposition),
                Checked::Textable(case) => textable.push((index, *case)),
            }
        }

        for chunk in textable.chunks(MAX_BATCH) {
            let (indexes, batch): (Vec<usize>, Vec<Textable>) = chunk.iter().cloned().unzip();
            for (index, disposition) in indexes.into_iter().zip(self.issue(batch).await?) {
                answers[index] = Some(disposition);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every case is answered"))
            .collect())
    }

    /// Checks one case without texting anyone: its phone, its test type and
    /// (a paid call, only when the rest is fine) its line type.
    pub async fn check(&self, case: &Incoming) -> Result<Checked, Fatal> {
        let request = &case.request;
        let finish = |status: Status, reason: &str| {
            Checked::Finished(Disposition::Done(
                CaseResult::new(request.case_id.clone(), status, case.attempt).with_reason(reason),
            ))
        };

        let phone =
            match E164::normalize(request.phone.as_deref().unwrap_or(""), self.settings.region) {
                Ok(phone) => phone,
                Err(err) => return Ok(finish(Status::InvalidPhone, err.code())),
            };
        let Some(test_type) = request.test_type.as_deref().and_then(TestType::parse) else {
            return Ok(finish(Status::Rejected, "invalid_test_type"));
        };

        let looked_up = (|| async {
            let _permit = self.lookup_permits.acquire().await.expect("never closed");
            self.lookup.lookup(&phone).await
        })
        .retry(lookup::retry_policy())
        .when(|err| matches!(err, LookupError::Retryable { .. }))
        .notify(|err, wait| debug!(phone = %phone, error = %err, ?wait, "retrying lookup"))
        .await;

        match looked_up {
            Ok(LineCheck::Textable) => {}
            Ok(LineCheck::NotTextable { reason }) => {
                return Ok(finish(Status::NotTextable, &reason));
            }
            Ok(LineCheck::Invalid { reason }) => return Ok(finish(Status::InvalidPhone, &reason)),
            Err(err @ LookupError::Unauthorized { .. }) => return Err(err.into()),
            Err(err) => {
                warn!(case_id = %request.case_id, phone = %phone, error = %err, "lookup retries ran out");
                return Ok(Checked::Finished(self.retry_or_fail(case, err.reason())));
            }
        }

        let issue = IssueRequest {
            test_type: test_type.as_str().to_owned(),
            test_date: request.test_date.map(|d| d.to_string()),
            symptom_date: request.symptom_date.map(|d| d.to_string()),
            tz_offset: 0,
            phone: phone.as_str().to_owned(),
            uuid: verification_uuid::derive(&self.settings.uuid_key, &request.case_id),
            sms_template_label: self.settings.sms_template_label.clone(),
        };
        Ok(Checked::Textable(Box::new(Textable {
            incoming: case.clone(),
            issue,
        })))
    }

    /// Issues one batch of at most ten textable cases. Items that may pass
    /// are sent again, alone with their own uuids, a few times in-process;
    /// what still fails goes back to the queue or, on its last attempt, is
    /// recorded `failed`.
    pub async fn issue(&self, batch: Vec<Textable>) -> Result<Vec<Disposition>, Fatal> {
        assert!(
            batch.len() <= MAX_BATCH,
            "a batch holds at most {MAX_BATCH} cases"
        );
        let mut answers: Vec<Option<Disposition>> = vec![None; batch.len()];
        let mut last_reason: Vec<String> = vec![String::new(); batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut backoff = lookup::retry_policy().build();
        let mut rate_limited_rounds = 0;

        while !pending.is_empty() {
            self.wait_out_rate_limit().await;

            let tz_offset = timezone::offset_minutes(&self.settings.time_zone, Timestamp::now());
            let codes: Vec<IssueRequest> = pending
                .iter()
                .map(|&i| IssueRequest {
                    tz_offset,
                    ..batch[i].issue.clone()
                })
                .collect();

            let verdicts = match self.verification.batch_issue(&codes).await {
                BatchVerdict::Items(verdicts) => verdicts,
                BatchVerdict::Unauthorized => return Err(Fatal::VerificationUnauthorized),
                BatchVerdict::NotFound { status } => {
                    return Err(Fatal::VerificationNotFound { status });
                }
                BatchVerdict::RateLimited { retry_after } => {
                    // Nothing was looked at, so no attempt is spent.
                    rate_limited_rounds += 1;
                    self.note_rate_limit(retry_after).await;
                    if rate_limited_rounds >= MAX_RATE_LIMITED_ROUNDS {
                        pending
                            .iter()
                            .for_each(|&i| last_reason[i] = "rate_limited".to_owned());
                        break;
                    }
                    continue;
                }
            };

            let mut still_pending = Vec::new();
            for (&index, verdict) in pending.iter().zip(verdicts) {
                let case = &batch[index];
                let result = |status| {
                    CaseResult::new(
                        case.incoming.request.case_id.clone(),
                        status,
                        case.incoming.attempt,
                    )
                    .with_uuid(case.issue.uuid.clone())
                };
                match verdict {
                    ItemVerdict::Sent { already_issued } => {
                        let mut sent = result(Status::Sent);
                        if already_issued {
                            sent = sent.with_reason("already_issued");
                        }
                        answers[index] = Some(Disposition::Done(sent));
                    }
                    ItemVerdict::Rejected { reason } => {
                        answers[index] = Some(Disposition::Done(
                            result(Status::Rejected).with_reason(reason),
                        ));
                    }
                    ItemVerdict::Retry { reason } => {
                        last_reason[index] = reason;
                        still_pending.push(index);
                    }
                    ItemVerdict::QuotaExceeded => {
                        last_reason[index] = "quota_exceeded".to_owned();
                        still_pending.push(index);
                    }
                }
            }
            pending = still_pending;

            if pending.is_empty() {
                break;
            }
            match backoff.next() {
                Some(wait) => {
                    debug!(
                        items = pending.len(),
                        ?wait,
                        "retrying failed items of a batch"
                    );
                    tokio::time::sleep(wait).await;
                }
                None => break,
            }
        }

        for index in pending {
            warn!(
                case_id = %batch[index].incoming.request.case_id,
                reason = %last_reason[index],
                attempt = batch[index].incoming.attempt,
                "issuing failed, retries ran out for this attempt"
            );
            answers[index] =
                Some(self.retry_or_fail(&batch[index].incoming, last_reason[index].clone()));
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every item is answered"))
            .collect())
    }

    /// Sends a case round again, or records it `failed` on its last attempt.
    fn retry_or_fail(&self, case: &Incoming, reason: String) -> Disposition {
        if case.attempt >= self.settings.max_attempts {
            Disposition::Done(
                CaseResult::new(case.request.case_id.clone(), Status::Failed, case.attempt)
                    .with_reason(reason),
            )
        } else {
            Disposition::Retry {
                request: case.request.clone(),
                next_attempt: case.attempt + 1,
                reason,
            }
        }
    }

    async fn note_rate_limit(&self, retry_after: Option<Timestamp>) {
        let now = Timestamp::now();
        // Without a readable Retry-After, a short pause and another look.
        let fallback = now + Duration::from_secs(2);
        let until = retry_after
            .filter(|at| *at > now)
            .unwrap_or(fallback)
            .min(now + MAX_RATE_LIMIT_WAIT);
        let mut guard = self.rate_limited_until.lock().await;
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
        warn!(until = %until, "verification server rate limit reached; pausing issuing");
    }

    async fn wait_out_rate_limit(&self) {
        let until = *self.rate_limited_until.lock().await;
        if let Some(until) = until {
            let wait = until.duration_since(Timestamp::now());
            if wait.is_positive() {
                let wait = Duration::try_from(wait).unwrap_or(MAX_RATE_LIMIT_WAIT);
                tokio::time::sleep(wait.min(MAX_RATE_LIMIT_WAIT)).await;
            }
        }
    }
}
