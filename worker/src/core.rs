//! The worker's core, the middle of producer -> worker -> writer: given
//! cases, decide what happens to each. A case is screened on its own (phone,
//! test type) at no cost; candidates then go in batches of at most ten,
//! looked up just before the batch is issued, so the paid lookups are never
//! far ahead of the issuing and a killed worker wastes few of them. The consume loop around this is thin, so tests
//! drive these functions directly.
//!
//! Faults are sorted where they are met: a retryable one is retried here a
//! few times with jittered backoff, then the case goes to a wait queue; a
//! spent quota or refused credentials close the worker's gate, and the cases
//! in hand go back to the queue unspent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, Retryable};
use canotify_common::metrics::Metrics;
use canotify_common::phone::Region;
use canotify_common::verification_uuid;
use canotify_common::{CaseResult, CheckRequest, E164, Secret, Status, TestType, timezone};
use futures_util::future::join_all;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::{Mutex, Semaphore, watch};
use tracing::{debug, error, warn};

use crate::lookup::{self, LineCheck, LookupClient, LookupError};
use crate::shared_cache::SharedLookupCache;
use crate::verification::{
    BatchVerdict, CodeStatus, IssueRequest, ItemVerdict, MAX_BATCH, VerificationClient,
    is_ambiguous,
};
use canotify_common::telemetry::Chain;

/// The longest a worker waits on one rate-limit answer before asking again.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// How many rate-limit answers one batch accepts before its cases go back
/// to the queue.
const MAX_RATE_LIMITED_ROUNDS: u32 = 30;

/// The most phone numbers the lookup cache holds.
const LOOKUP_CACHE_CAPACITY: usize = 200_000;

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
    /// How long a lookup answer is trusted for the same phone.
    pub lookup_cache_age: Duration,
    /// How long issuing pauses after the realm's daily quota is spent.
    pub quota_pause: Duration,
    /// The realm's verification requests per minute, for all workers
    /// together; no limit of canotify's own when unset.
    pub requests_per_minute: Option<u32>,
}

/// One case as it arrives.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    pub request: CheckRequest,
    /// The number of this attempt, 1 for the first.
    pub attempt: u32,
    /// When an earlier attempt first failed (RFC 3339), if one did.
    pub first_failure: Option<String>,
    /// An earlier attempt's lookup found the number textable.
    pub known_textable: bool,
    /// An earlier attempt failed in a way that leaves it unknown whether
    /// the code was issued.
    pub ambiguous: bool,
}

impl Incoming {
    pub fn first(request: CheckRequest) -> Self {
        Self {
            request,
            attempt: 1,
            first_failure: None,
            known_textable: false,
            ambiguous: false,
        }
    }
}

/// What becomes of one case.
#[derive(Clone, Debug, PartialEq)]
pub enum Disposition {
    /// A final outcome, for the writer.
    Done(CaseResult),
    /// Not finished: it waits, then comes round again.
    Retry(Retry),
    /// The last attempt failed: a `failed` outcome for the writer, and a
    /// dead letter for an operator.
    GiveUp(CaseResult),
    /// Not looked at, because the worker's gate closed: back to the queue
    /// without spending an attempt.
    Hold,
}

/// A case sent round again, with what the next attempt should know.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub request: CheckRequest,
    /// The attempt that just failed.
    pub attempt: u32,
    pub reason: String,
    pub first_failure: String,
    pub known_textable: bool,
    pub ambiguous: bool,
}

impl Disposition {
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Done(result) | Self::GiveUp(result) => Some(result.status),
            Self::Retry(_) | Self::Hold => None,
        }
    }
}

/// A case whose phone and test type are fine: it waits for a batch, whose
/// lookups are made just before the batch is issued, so a worker killed
/// while cases wait has paid for no lookup of theirs.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub incoming: Incoming,
    pub phone: E164,
    pub issue: IssueRequest,
}

/// What the checks that cost nothing say of a case.
#[derive(Clone, Debug)]
pub enum Screened {
    Candidate(Box<Candidate>),
    Finished(Disposition),
}

/// A candidate the lookup found textable.
#[derive(Clone, Debug)]
struct Textable {
    incoming: Incoming,
    issue: IssueRequest,
}

/// A fault no retry can fix: the worker stops taking work until an operator
/// fixes the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(
        "the verification server refused the API key (HTTP 401); check CANOTIFY_VERIFICATION_API_KEY and the realm's IP allow-list"
    )]
    VerificationUnauthorized,
    #[error(
        "the verification server has no such endpoint at the configured URL (HTTP {status}); check CANOTIFY_VERIFICATION_URL"
    )]
    VerificationNotFound { status: u16 },
}

/// Whether the worker takes work.
#[derive(Clone, Debug)]
pub enum Gate {
    Open,
    /// The daily quota is spent: no issuing until then.
    Paused {
        until: Instant,
    },
    /// A configuration fault: no work until restarted.
    Stopped(Arc<Fatal>),
}

impl Gate {
    pub fn is_open(&self) -> bool {
        match self {
            Gate::Open => true,
            Gate::Paused { until } => *until <= Instant::now(),
            Gate::Stopped(_) => false,
        }
    }
}

pub struct Worker {
    lookup: LookupClient,
    verification: VerificationClient,
    settings: Settings,
    lookup_permits: Semaphore,
    lookup_cache: std::sync::Mutex<HashMap<E164, (LineCheck, Instant)>>,
    rate_limited_until: Mutex<Option<Timestamp>>,
    next_request_slot: Mutex<Instant>,
    request_interval: std::sync::Mutex<Option<Duration>>,
    gate: watch::Sender<Gate>,
    metrics: Arc<Metrics>,
    shared_cache: Option<SharedLookupCache>,
}

impl Worker {
    pub fn new(lookup: LookupClient, verification: VerificationClient, settings: Settings) -> Self {
        let permits = settings.lookup_concurrency.max(1);
        let worker = Self {
            lookup,
            verification,
            lookup_permits: Semaphore::new(permits),
            lookup_cache: std::sync::Mutex::new(HashMap::new()),
            rate_limited_until: Mutex::new(None),
            next_request_slot: Mutex::new(Instant::now()),
            request_interval: std::sync::Mutex::new(None),
            gate: watch::Sender::new(Gate::Open),
            metrics: Arc::new(Metrics::default()),
            shared_cache: None,
            settings,
        };
        worker.share_request_rate(1);
        worker
    }

    /// Shares lookup answers with the other replicas through `cache`.
    pub fn with_shared_cache(mut self, cache: SharedLookupCache) -> Self {
        self.shared_cache = Some(cache);
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Watches the gate: the consume loop stops consuming while it is shut.
    pub fn gate(&self) -> watch::Receiver<Gate> {
        self.gate.subscribe()
    }

    /// Takes this worker's share of the realm's request rate, given how
    /// many workers consume the checks queue.
    pub fn share_request_rate(&self, workers: u32) {
        let interval = self.settings.requests_per_minute.map(|per_minute| {
            let mine = f64::from(per_minute.max(1)) / f64::from(workers.max(1));
            Duration::from_secs_f64(60.0 / mine)
        });
        let mut current = self.request_interval.lock().expect("never poisoned");
        // A worker's first request waits one interval too, so replicas
        // that start together do not all spend the realm's rate at once.
        if current.is_none()
            && let Some(interval) = interval
            && let Ok(mut next) = self.next_request_slot.try_lock()
        {
            *next = Instant::now() + interval;
        }
        *current = interval;
    }

    /// Screens every case, then processes the candidates in batches of
    /// ten. Answers in the order of `cases`.
    pub async fn handle_batch(&self, cases: Vec<Incoming>) -> Vec<Disposition> {
        let mut answers: Vec<Option<Disposition>> = vec![None; cases.len()];
        let mut candidates = Vec::new();
        for (index, case) in cases.iter().enumerate() {
            match self.screen(case) {
                Screened::Finished(disposition) => answers[index] = Some(disposition),
                Screened::Candidate(candidate) => candidates.push((index, *candidate)),
            }
        }

        for chunk in candidates.chunks(MAX_BATCH) {
            let (indexes, batch): (Vec<usize>, Vec<Candidate>) = chunk.iter().cloned().unzip();
            for (index, disposition) in indexes.into_iter().zip(self.process(batch).await) {
                answers[index] = Some(disposition);
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every case is answered"))
            .collect()
    }

    /// The checks that cost nothing: the phone must be a real number and
    /// the test type one the server knows.
    pub fn screen(&self, case: &Incoming) -> Screened {
        let request = &case.request;
        let finish = |status: Status, reason: &str| {
            Screened::Finished(Disposition::Done(
                CaseResult::new(request.case_id.clone(), status, case.attempt).with_reason(reason),
            ))
        };

        let raw_phone = request.phone.as_deref().unwrap_or("");
        let phone = match E164::normalize(raw_phone, self.settings.region) {
            Ok(phone) => phone,
            Err(err) => return finish(Status::InvalidPhone, err.code()),
        };
        let Some(test_type) = request.test_type.as_deref().and_then(TestType::parse) else {
            return finish(Status::Rejected, "invalid_test_type");
        };

        let issue = IssueRequest {
            test_type: test_type.as_str().to_owned(),
            test_date: request.test_date.map(|d| d.to_string()),
            symptom_date: request.symptom_date.map(|d| d.to_string()),
            tz_offset: 0,
            phone: phone.as_str().to_owned(),
            uuid: verification_uuid::derive(&self.settings.uuid_key, &request.case_id),
            sms_template_label: self.settings.sms_template_label.clone(),
        };
        Screened::Candidate(Box::new(Candidate {
            incoming: case.clone(),
            phone,
            issue,
        }))
    }

    /// Processes one batch of at most ten candidates: waits for this
    /// worker's turn at the verification server, looks each number up (a
    /// paid call, unless a recent answer is known), and issues the textable
    /// ones in one call.
    pub async fn process(&self, batch: Vec<Candidate>) -> Vec<Disposition> {
        assert!(
            batch.len() <= MAX_BATCH,
            "a batch holds at most {MAX_BATCH} cases"
        );
        if !self.gate.borrow().is_open() {
            return vec![Disposition::Hold; batch.len()];
        }
        self.wait_out_rate_limit().await;
        self.wait_for_request_slot().await;

        let unknown = self.recall_shared_answers(&batch).await;
        let verdicts = join_all(batch.iter().map(|c| self.check_line(c))).await;
        self.share_new_answers(&unknown).await;
        let mut answers: Vec<Option<Disposition>> = vec![None; batch.len()];
        let mut textable = Vec::new();
        for (index, (candidate, verdict)) in batch.into_iter().zip(verdicts).enumerate() {
            match verdict {
                None => textable.push((
                    index,
                    Textable {
                        incoming: candidate.incoming,
                        issue: candidate.issue,
                    },
                )),
                Some(disposition) => answers[index] = Some(disposition),
            }
        }

        if !textable.is_empty() {
            let (indexes, cases): (Vec<usize>, Vec<Textable>) = textable.into_iter().unzip();
            for (index, disposition) in indexes.into_iter().zip(self.issue(cases).await) {
                answers[index] = Some(disposition);
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every candidate is answered"))
            .collect()
    }

    /// Fills this worker's cache from the replicas' shared one for the
    /// batch's phones, in one query; answers the phones it knew nothing of.
    async fn recall_shared_answers(&self, batch: &[Candidate]) -> Vec<E164> {
        let Some(shared) = &self.shared_cache else {
            return Vec::new();
        };
        let unknown: Vec<E164> = batch
            .iter()
            .filter(|c| !c.incoming.known_textable && self.cached(&c.phone).is_none())
            .map(|c| c.phone.clone())
            .collect();
        let found = shared.get_many(&unknown).await;
        for (phone, answer) in &found {
            self.remember(phone, answer);
        }
        unknown
            .into_iter()
            .filter(|p| !found.contains_key(p))
            .collect()
    }

    /// Stores what this batch's lookups learned of `phones` for the other
    /// replicas, in one statement.
    async fn share_new_answers(&self, phones: &[E164]) {
        let Some(shared) = &self.shared_cache else {
            return;
        };
        let answers: Vec<(E164, LineCheck)> = phones
            .iter()
            .filter_map(|p| self.cached(p).map(|answer| (p.clone(), answer)))
            .collect();
        shared.put_many(&answers).await;
    }

    /// The lookup's verdict on one candidate: `None` when it is textable,
    /// else what becomes of it.
    async fn check_line(&self, candidate: &Candidate) -> Option<Disposition> {
        let case = &candidate.incoming;
        let finish = |status: Status, reason: &str| {
            Some(Disposition::Done(
                CaseResult::new(case.request.case_id.clone(), status, case.attempt)
                    .with_reason(reason),
            ))
        };
        if case.known_textable {
            return None;
        }
        if !self.gate.borrow().is_open() {
            return Some(Disposition::Hold);
        }

        match self.look_up(&candidate.phone).await {
            Ok(LineCheck::Textable) => None,
            Ok(LineCheck::NotTextable { reason }) => finish(Status::NotTextable, &reason),
            Ok(LineCheck::Invalid { reason }) => finish(Status::InvalidPhone, &reason),
            Err(err @ LookupError::Unauthorized { .. }) => {
                self.stop(Fatal::Lookup(err));
                Some(Disposition::Hold)
            }
            Err(err) => {
                warn!(case_id = %case.request.case_id, phone = %candidate.phone, error = %Chain(&err), "lookup retries ran out");
                Some(self.retry_or_give_up(case, err.reason(), false, false))
            }
        }
    }

    /// A lookup answer for `phone`: a recent one from this worker's cache
    /// (filled from the replicas' shared one batch by batch), or a paid
    /// lookup retried a few times on transient faults.
    async fn look_up(&self, phone: &E164) -> Result<LineCheck, LookupError> {
        if let Some(known) = self.cached(phone) {
            return Ok(known);
        }

        let verdict = (|| async {
            let _permit = self.lookup_permits.acquire().await.expect("never closed");
            self.lookup.lookup(phone).await
        })
        .retry(lookup::retry_policy())
        .when(|err| matches!(err, LookupError::Retryable { .. }))
        .notify(|err, wait| debug!(phone = %phone, error = %Chain(&err), ?wait, "retrying lookup"))
        .await?;

        self.remember(phone, &verdict);
        Ok(verdict)
    }

    fn remember(&self, phone: &E164, verdict: &LineCheck) {
        let mut cache = self.lookup_cache.lock().expect("never poisoned");
        if cache.len() >= LOOKUP_CACHE_CAPACITY {
            let age = self.settings.lookup_cache_age;
            cache.retain(|_, (_, at)| at.elapsed() < age);
            if cache.len() >= LOOKUP_CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(phone.clone(), (verdict.clone(), Instant::now()));
    }

    fn cached(&self, phone: &E164) -> Option<LineCheck> {
        let cache = self.lookup_cache.lock().expect("never poisoned");
        cache
            .get(phone)
            .filter(|(_, at)| at.elapsed() < self.settings.lookup_cache_age)
            .map(|(verdict, _)| verdict.clone())
    }

    /// Issues one batch of at most ten textable cases. Items that may pass
    /// are sent again, alone with their own uuids, a few times in-process;
    /// before an item whose last failure may have issued its code is sent
    /// again, the server is asked whether the code exists. What still fails
    /// goes to a wait queue or, on its last attempt, is given up. The caller
    /// has already waited for this worker's turn for the first request.
    async fn issue(&self, batch: Vec<Textable>) -> Vec<Disposition> {
        assert!(
            batch.len() <= MAX_BATCH,
            "a batch holds at most {MAX_BATCH} cases"
        );
        let mut first_request = true;
        let mut answers: Vec<Option<Disposition>> = vec![None; batch.len()];
        let mut last_reason: Vec<String> = vec![String::new(); batch.len()];
        let mut ambiguous: Vec<bool> = batch.iter().map(|c| c.incoming.ambiguous).collect();
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut backoff = lookup::retry_policy().build();
        let mut rate_limited_rounds = 0;

        while !pending.is_empty() {
            if !self.gate.borrow().is_open() {
                for &index in &pending {
                    answers[index] = Some(Disposition::Hold);
                }
                pending.clear();
                break;
            }

            // A code that may already exist is looked for before it is
            // issued again; the server would refuse a second one anyway,
            // but a found code ends the case without spending a request.
            let mut to_send = Vec::with_capacity(pending.len());
            for &index in &pending {
                if !ambiguous[index] {
                    to_send.push(index);
                    continue;
                }
                match self
                    .verification
                    .check_code_status(&batch[index].issue.uuid)
                    .await
                {
                    Ok(CodeStatus::Issued) => {
                        answers[index] = Some(Disposition::Done(
                            self.result_of(&batch[index], Status::Sent)
                                .with_reason("confirmed_by_status"),
                        ));
                    }
                    Ok(CodeStatus::NotFound | CodeStatus::Unknown) => to_send.push(index),
                    Err(fatal) => {
                        self.stop(fatal);
                        to_send.push(index);
                    }
                }
            }
            if to_send.is_empty() {
                pending.clear();
                break;
            }

            if !std::mem::take(&mut first_request) {
                self.wait_for_request_slot().await;
            }
            let tz_offset = timezone::offset_minutes(&self.settings.time_zone, Timestamp::now());
            let codes: Vec<IssueRequest> = to_send
                .iter()
                .map(|&i| IssueRequest {
                    tz_offset,
                    ..batch[i].issue.clone()
                })
                .collect();

            let verdicts = match self.verification.batch_issue(&codes).await {
                BatchVerdict::Items(verdicts) => verdicts,
                BatchVerdict::Unauthorized => {
                    self.stop(Fatal::VerificationUnauthorized);
                    pending = to_send;
                    continue;
                }
                BatchVerdict::NotFound { status } => {
                    self.stop(Fatal::VerificationNotFound { status });
                    pending = to_send;
                    continue;
                }
                BatchVerdict::RateLimited { retry_after } => {
                    // Nothing was looked at, so no attempt is spent.
                    rate_limited_rounds += 1;
                    self.note_rate_limit(retry_after).await;
                    pending = to_send;
                    if rate_limited_rounds >= MAX_RATE_LIMITED_ROUNDS {
                        pending
                            .iter()
                            .for_each(|&i| last_reason[i] = "rate_limited".to_owned());
                        break;
                    }
                    self.wait_out_rate_limit().await;
                    continue;
                }
            };

            let mut still_pending = Vec::new();
            for (&index, verdict) in to_send.iter().zip(verdicts) {
                let case = &batch[index];
                match verdict {
                    ItemVerdict::Sent { already_issued } => {
                        let mut sent = self.result_of(case, Status::Sent);
                        if already_issued {
                            sent = sent.with_reason("already_issued");
                        }
                        answers[index] = Some(Disposition::Done(sent));
                    }
                    ItemVerdict::Rejected { reason } => {
                        answers[index] = Some(Disposition::Done(
                            self.result_of(case, Status::Rejected).with_reason(reason),
                        ));
                    }
                    ItemVerdict::Retry { reason } => {
                        ambiguous[index] = is_ambiguous(&reason);
                        last_reason[index] = reason;
                        still_pending.push(index);
                    }
                    ItemVerdict::QuotaExceeded => {
                        self.pause_for_quota();
                        answers[index] = Some(Disposition::Hold);
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
            let case = &batch[index];
            warn!(
                case_id = %case.incoming.request.case_id,
                reason = %last_reason[index],
                attempt = case.incoming.attempt,
                "issuing failed; in-process retries ran out for this attempt"
            );
            answers[index] = Some(self.retry_or_give_up(
                &case.incoming,
                last_reason[index].clone(),
                true,
                ambiguous[index],
            ));
        }
        answers
            .into_iter()
            .map(|a| a.expect("every item is answered"))
            .collect()
    }

    fn result_of(&self, case: &Textable, status: Status) -> CaseResult {
        CaseResult::new(
            case.incoming.request.case_id.clone(),
            status,
            case.incoming.attempt,
        )
        .with_uuid(case.issue.uuid.clone())
    }

    /// Sends a case round again, or gives it up on its last attempt.
    fn retry_or_give_up(
        &self,
        case: &Incoming,
        reason: String,
        known_textable: bool,
        ambiguous: bool,
    ) -> Disposition {
        if case.attempt >= self.settings.max_attempts {
            return Disposition::GiveUp(
                CaseResult::new(case.request.case_id.clone(), Status::Failed, case.attempt)
                    .with_reason(reason),
            );
        }
        Disposition::Retry(Retry {
            request: case.request.clone(),
            attempt: case.attempt,
            reason,
            first_failure: case
                .first_failure
                .clone()
                .unwrap_or_else(|| Timestamp::now().to_string()),
            known_textable,
            ambiguous,
        })
    }

    /// Shuts the gate for good: one error for the operator, then no work.
    fn stop(&self, fatal: Fatal) {
        self.gate.send_if_modified(|gate| {
            if matches!(gate, Gate::Stopped(_)) {
                return false;
            }
            error!(error = %fatal, "stopped taking work; cases stay queued until the configuration is fixed and the worker restarted");
            *gate = Gate::Stopped(Arc::new(fatal));
            self.metrics.set_gate_shut(true);
            true
        });
    }

    /// Opens the gate again once a quota pause has passed.
    pub fn reopen_after_pause(&self) {
        self.gate.send_if_modified(|gate| match gate {
            Gate::Paused { until } if *until <= Instant::now() => {
                *gate = Gate::Open;
                self.metrics.set_gate_shut(false);
                true
            }
            _ => false,
        });
    }

    /// Shuts the gate until the quota pause has passed.
    fn pause_for_quota(&self) {
        let until = Instant::now() + self.settings.quota_pause;
        self.gate.send_if_modified(|gate| match gate {
            Gate::Stopped(_) => false,
            Gate::Paused { until: current } if *current > Instant::now() => false,
            _ => {
                error!(
                    pause = ?self.settings.quota_pause,
                    "the realm's daily quota is spent; issuing paused, cases wait in the queue"
                );
                *gate = Gate::Paused { until };
                self.metrics.quota_exceeded();
                self.metrics.set_gate_shut(true);
                true
            }
        });
    }

    /// Spaces this worker's requests to its share of the realm's rate.
    async fn wait_for_request_slot(&self) {
        let Some(interval) = *self.request_interval.lock().expect("never poisoned") else {
            return;
        };
        let slot = {
            let mut next = self.next_request_slot.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }

    async fn note_rate_limit(&self, retry_after: Option<Timestamp>) {
        let now = Timestamp::now();
        // Without a readable Retry-After, a short pause and another look.
        let fallback = now + Duration::from_secs(2);
        let until = retry_after
            .filter(|at| *at > now)
            .unwrap_or(fallback)
            .min(now + MAX_RATE_LIMIT_WAIT);
        self.metrics.rate_limited();
        let mut guard = self.rate_limited_until.lock().await;
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
            warn!(until = %until, "verification server rate limit reached; pausing issuing");
        }
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
