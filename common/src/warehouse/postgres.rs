//! The warehouse on PostgreSQL: the local default and a fine production
//! choice for a smaller agency. One connection, opened again on the next
//! call after it breaks; every value is a bound parameter, and batches go
//! as arrays unnested in SQL, so a batch is one statement.

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Transaction};

use super::{
    Candidate, ClaimRequest, ClaimedPage, DUPLICATE_REASON, Decision, OutcomeCounts, Reopened,
    Texting, Warehouse, WarehouseError, plan_claims, quote_schema,
};
use crate::config::redact_url;
use crate::telemetry::Chain;
use crate::{CaseId, CaseResult, CheckRequest, E164, Secret, Status};

/// The migrations, in order; `{schema}` stands for the quoted schema name.
const MIGRATIONS: [(i32, &str); 3] = [
    (1, include_str!("../../../migrations/0001_cases.sql")),
    (2, include_str!("../../../migrations/0002_outcomes.sql")),
    (
        3,
        include_str!("../../../migrations/0003_writeback_view.sql"),
    ),
];

/// How many times a statement that lost a deadlock is tried again.
const MAX_CONFLICT_RETRIES: u64 = 5;

/// A case as the health department's table holds it, for seeding a local
/// warehouse.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCase {
    pub case_id: String,
    pub phone: Option<String>,
    pub test_date: Option<jiff::civil::Date>,
    pub symptom_date: Option<jiff::civil::Date>,
    pub test_type: Option<String>,
}

/// One row of the outcome table, as tests and the operator CLI read it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeRow {
    pub case_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub verification_uuid: Option<String>,
    pub attempts: i32,
    pub phone_e164: Option<String>,
    pub duplicate_of: Option<String>,
}

pub struct PostgresWarehouse {
    url: Secret,
    schema: String,
    quoted: String,
    client: Mutex<Option<Client>>,
}

impl PostgresWarehouse {
    /// Checks the schema name and opens the first connection, so a wrong URL
    /// is reported at start rather than at the first case.
    pub async fn connect(url: &Secret, schema: &str) -> Result<Self, WarehouseError> {
        let quoted = quote_schema(schema)?;
        let client = open(url).await?;
        Ok(Self {
            url: url.clone(),
            schema: schema.to_owned(),
            quoted,
            client: Mutex::new(Some(client)),
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Runs `f` on a live connection, reconnecting first if the last one
    /// broke.
    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, WarehouseError>,
    ) -> Result<T, WarehouseError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(open(&self.url).await?);
        }
        let client = guard.as_mut().expect("a connection was just opened");
        let result = f(client).await;
        if result.as_ref().is_err_and(WarehouseError::is_retryable) {
            *guard = None;
        }
        result
    }

    /// Runs `op` again when it loses a deadlock or a serialisation race:
    /// every write here is idempotent, and PostgreSQL has already rolled
    /// the loser back.
    async fn retrying_conflicts<T, Op, Fut>(&self, op: Op) -> Result<T, WarehouseError>
    where
        Op: Fn() -> Fut,
        Fut: Future<Output = Result<T, WarehouseError>>,
    {
        let mut conflicts = 0;
        loop {
            match op().await {
                Err(err) if err.is_conflict() && conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::debug!(
                        conflicts,
                        "a warehouse statement lost a lock race; trying again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20 * conflicts)).await;
                }
                result => return result,
            }
        }
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{schema}", &self.quoted)
    }

    /// Adds cases to the local case table (seeding and tests only: in
    /// production the health department owns this table).
    pub async fn insert_cases(&self, cases: &[NewCase]) -> Result<u64, WarehouseError> {
        let sql = self.sql(
            "INSERT INTO {schema}.cases (case_id, phone, test_date, symptom_date, test_type)
             SELECT id, phone, test_date::date, symptom_date::date, test_type
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                  AS t(id, phone, test_date, symptom_date, test_type)
             ON CONFLICT (case_id) DO NOTHING",
        );
        let mut inserted = 0;
        for chunk in cases.chunks(5_000) {
            let ids: Vec<&str> = chunk.iter().map(|c| c.case_id.as_str()).collect();
            let phones: Vec<Option<&str>> = chunk.iter().map(|c| c.phone.as_deref()).collect();
            let tests: Vec<Option<String>> = chunk
                .iter()
                .map(|c| c.test_date.map(|d| d.to_string()))
                .collect();
            let symptoms: Vec<Option<String>> = chunk
                .iter()
                .map(|c| c.symptom_date.map(|d| d.to_string()))
                .collect();
            let types: Vec<Option<&str>> = chunk.iter().map(|c| c.test_type.as_deref()).collect();
            inserted += self
                .with_client(async |client| {
                    Ok(client
                        .execute(&sql, &[&ids, &phones, &tests, &symptoms, &types])
                        .await?)
                })
                .await?;
        }
        Ok(inserted)
    }

    /// Every outcome row, ordered by case id.
    pub async fn outcomes(&self) -> Result<Vec<OutcomeRow>, WarehouseError> {
        let sql = self.sql(
            "SELECT case_id, status, reason, verification_uuid, attempts, phone_e164, duplicate_of
             FROM {schema}.outcomes ORDER BY case_id",
        );
        let rows = self
            .with_client(async |client| Ok(client.query(&sql, &[]).await?))
            .await?;
        Ok(rows
            .iter()
            .map(|row| OutcomeRow {
                case_id: row.get(0),
                status: row.get(1),
                reason: row.get(2),
                verification_uuid: row.get(3),
                attempts: row.get(4),
                phone_e164: row.get(5),
                duplicate_of: row.get(6),
            })
            .collect())
    }

    /// Drops the schema and everything in it (tests and the demo only).
    pub async fn drop_schema(&self) -> Result<(), WarehouseError> {
        let sql = self.sql("DROP SCHEMA IF EXISTS {schema} CASCADE");
        self.with_client(async |client| Ok(client.batch_execute(&sql).await?))
            .await
    }

    /// Opens a transaction holding the schema's claim lock: every decision
    /// about one text per person is made under it, so no two of them read
    /// the same rows at once.
    async fn claim_transaction<'c>(
        &self,
        client: &'c mut Client,
    ) -> Result<Transaction<'c>, WarehouseError> {
        let lock_key = format!("canotify claim {}", self.schema);
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_key],
        )
        .await?;
        Ok(tx)
    }

    async fn read_candidates(
        &self,
        tx: &Transaction<'_>,
        request: &ClaimRequest,
    ) -> Result<(Vec<Candidate>, Vec<(String, &'static str)>, Option<CaseId>), WarehouseError> {
        let sql = self.sql(
            "SELECT c.case_id, c.phone, c.test_date::text, c.symptom_date::text, c.test_type
             FROM {schema}.cases c
             LEFT JOIN {schema}.outcomes o ON o.case_id = c.case_id
             WHERE ($1::text IS NULL OR c.case_id > $1)
               AND (o.case_id IS NULL
                    OR (o.status = 'queued'
                        AND o.claimed_at < now() - make_interval(secs => $2)))
             ORDER BY c.case_id
             LIMIT $3",
        );
        let after = request.after.as_ref().map(CaseId::as_str);
        let age = request.claim_age.as_secs_f64();
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let rows = tx.query(&sql, &[&after, &age, &limit]).await?;

        let mut candidates = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        let mut last: Option<String> = None;
        for row in &rows {
            let raw_id: String = row.get(0);
            last = Some(raw_id.clone());
            let Ok(case_id) = CaseId::new(raw_id.clone()) else {
                refused.push((raw_id, "case_id_unusable"));
                continue;
            };
            let (Ok(test_date), Ok(symptom_date)) =
                (parse_date(row.get(2)), parse_date(row.get(3)))
            else {
                refused.push((raw_id, "date_unreadable"));
                continue;
            };
            let request_row = CheckRequest {
                case_id,
                phone: row.get(1),
                test_date,
                symptom_date,
                test_type: row.get(4),
            };
            candidates.push(Candidate::new(request_row, request.region));
        }

        // The cursor moves past refused rows too, and a short page is the last.
        let next = if rows.len() < request.limit {
            None
        } else {
            last.and_then(|id| CaseId::new(id).ok().or_else(|| Some(sentinel_after())))
        };
        Ok((candidates, refused, next))
    }

    async fn read_texting(
        &self,
        tx: &Transaction<'_>,
        candidates: &[Candidate],
    ) -> Result<Vec<Texting>, WarehouseError> {
        let phones: Vec<&str> = candidates
            .iter()
            .filter_map(|c| c.phone.as_ref().map(E164::as_str))
            .collect();
        if phones.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.sql(
            "SELECT case_id, phone_e164, episode_date::text, status
             FROM {schema}.outcomes
             WHERE phone_e164 = ANY($1) AND status IN ('queued', 'sent')
               AND episode_date IS NOT NULL",
        );
        let rows = tx.query(&sql, &[&phones]).await?;
        let mut texting = Vec::with_capacity(rows.len());
        for row in rows {
            let (Ok(case_id), Ok(phone), Ok(Some(date)), Some(status)) = (
                CaseId::new(row.get::<_, String>(0)),
                E164::from_e164(row.get(1)),
                parse_date(row.get(2)),
                Status::parse(row.get(3)),
            ) else {
                return Err(WarehouseError::BadData(
                    "an outcome row has an unreadable phone, date or status".to_owned(),
                ));
            };
            texting.push(Texting {
                case_id,
                phone,
                episode_date: date,
                status,
            });
        }
        Ok(texting)
    }
}

/// A cursor value that sorts after any unusable id it stands in for; only
/// reached when a page ends on an id canotify cannot carry.
fn sentinel_after() -> CaseId {
    CaseId::new("\u{10FFFF}").expect("a one-character id is valid")
}

fn parse_date(text: Option<String>) -> Result<Option<jiff::civil::Date>, ()> {
    text.map(|t| t.parse().map_err(|_| ())).transpose()
}

/// How long connecting, the start-up exchange included, may take: a
/// database host that never answers is reported, and retried, like one
/// that refuses.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn open(url: &Secret) -> Result<Client, WarehouseError> {
    let address = || redact_url(url.expose());
    let connecting = tokio_postgres::connect(url.expose(), NoTls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| WarehouseError::ConnectTimeout {
            address: address(),
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|source| WarehouseError::Connect {
            address: address(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %Chain(&err), "warehouse connection closed");
        }
    });
    Ok(client)
}

impl Warehouse for PostgresWarehouse {
    async fn migrate(&self) -> Result<(), WarehouseError> {
        let lock_key = format!("canotify migrate {}", self.schema);
        let setup = self.sql(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.canotify_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now());",
        );
        let applied_sql = self.sql("SELECT version FROM {schema}.canotify_migrations");
        let record_sql = self.sql("INSERT INTO {schema}.canotify_migrations (version) VALUES ($1)");
        let migrations: Vec<(i32, String)> = MIGRATIONS
            .iter()
            .map(|(version, text)| (*version, self.sql(text)))
            .collect();

        self.with_client(async |client| {
            // Processes start together under compose; the lock lets one
            // migrate while the others wait and then find nothing to do.
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&lock_key],
            )
            .await?;
            tx.batch_execute(&setup).await?;
            let applied: Vec<i32> = tx
                .query(&applied_sql, &[])
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for (version, text) in &migrations {
                if !applied.contains(version) {
                    tx.batch_execute(text).await?;
                    tx.execute(&record_sql, &[version]).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn claim_page(&self, request: &ClaimRequest) -> Result<ClaimedPage, WarehouseError> {
        let claim_sql = self.sql(
            "INSERT INTO {schema}.outcomes AS o
                 (case_id, status, phone_e164, episode_date, claimed_at, updated_at)
             SELECT id, 'queued', phone, episode::date, now(), now()
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(id, phone, episode)
             ORDER BY id
             ON CONFLICT (case_id) DO UPDATE
                 SET claimed_at = now(), published_at = NULL, updated_at = now(),
                     phone_e164 = EXCLUDED.phone_e164, episode_date = EXCLUDED.episode_date
                 WHERE o.status = 'queued'
             RETURNING case_id",
        );
        let final_sql = self.sql(
            "INSERT INTO {schema}.outcomes AS o
                 (case_id, status, reason, duplicate_of, phone_e164, episode_date,
                  finished_at, updated_at)
             SELECT id, status, reason, duplicate_of, phone, episode::date, now(), now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                  AS t(id, status, reason, duplicate_of, phone, episode)
             ORDER BY id
             ON CONFLICT (case_id) DO UPDATE
                 SET status = EXCLUDED.status, reason = EXCLUDED.reason,
                     duplicate_of = EXCLUDED.duplicate_of,
                     finished_at = now(), updated_at = now()
                 WHERE o.status = 'queued'",
        );

        self.retrying_conflicts(|| {
            self.with_client(async |client| {
                // One claim at a time per schema: with two producers, the second
                // reads only after the first has committed its claims.
                let tx = self.claim_transaction(client).await?;
                let (candidates, refused, next) = self.read_candidates(&tx, request).await?;
                let texting = self.read_texting(&tx, &candidates).await?;
                let decisions = plan_claims(&candidates, texting, request.window_days);

                let mut claim = FinalRows::default();
                let mut finals = FinalRows::default();
                let mut deferred = 0;
                let mut duplicates = 0;
                for (candidate, decision) in candidates.iter().zip(&decisions) {
                    match decision {
                        Decision::Claim => claim.push(candidate, None, None, None),
                        Decision::Duplicate { of } => {
                            duplicates += 1;
                            finals.push(
                                candidate,
                                Some(Status::Duplicate),
                                Some(DUPLICATE_REASON),
                                Some(of.as_str()),
                            );
                        }
                        Decision::Defer => deferred += 1,
                    }
                }
                for (id, reason) in &refused {
                    finals.push_raw(id, Status::Rejected, reason);
                }

                let claimed_ids: Vec<String> = if claim.ids.is_empty() {
                    Vec::new()
                } else {
                    tx.query(&claim_sql, &[&claim.ids, &claim.phones, &claim.episodes])
                        .await?
                        .iter()
                        .map(|row| row.get(0))
                        .collect()
                };
                if !finals.ids.is_empty() {
                    tx.execute(
                        &final_sql,
                        &[
                            &finals.ids,
                            &finals.statuses,
                            &finals.reasons,
                            &finals.duplicate_of,
                            &finals.phones,
                            &finals.episodes,
                        ],
                    )
                    .await?;
                }
                tx.commit().await?;

                // Only what this producer really claimed is published: a row the
                // writer finished meanwhile is left alone.
                let mut by_id: HashMap<String, CheckRequest> = candidates
                    .into_iter()
                    .map(|c| (c.request.case_id.as_str().to_owned(), c.request))
                    .collect();
                let claimed = claimed_ids
                    .iter()
                    .filter_map(|id| by_id.remove(id))
                    .collect();
                Ok(ClaimedPage {
                    claimed,
                    duplicates,
                    deferred,
                    refused: refused.len(),
                    next,
                })
            })
        })
        .await
    }

    async fn mark_published(&self, cases: &[CaseId]) -> Result<(), WarehouseError> {
        // Rows are locked in case-id order, the order the writer uses, so
        // the two cannot deadlock.
        let sql = self.sql(
            "WITH locked AS (
                 SELECT case_id FROM {schema}.outcomes
                 WHERE case_id = ANY($1) AND status = 'queued'
                 ORDER BY case_id
                 FOR UPDATE)
             UPDATE {schema}.outcomes o SET published_at = now(), updated_at = now()
             FROM locked WHERE o.case_id = locked.case_id",
        );
        let ids: Vec<&str> = cases.iter().map(CaseId::as_str).collect();
        self.retrying_conflicts(|| {
            self.with_client(async |client| Ok(client.execute(&sql, &[&ids]).await.map(drop)?))
        })
        .await
    }

    async fn release_claims(&self, cases: &[CaseId]) -> Result<(), WarehouseError> {
        let sql = self.sql(
            "WITH locked AS (
                 SELECT case_id FROM {schema}.outcomes
                 WHERE case_id = ANY($1) AND status = 'queued' AND published_at IS NULL
                 ORDER BY case_id
                 FOR UPDATE)
             DELETE FROM {schema}.outcomes o USING locked WHERE o.case_id = locked.case_id",
        );
        let ids: Vec<&str> = cases.iter().map(CaseId::as_str).collect();
        self.retrying_conflicts(|| {
            self.with_client(async |client| Ok(client.execute(&sql, &[&ids]).await.map(drop)?))
        })
        .await
    }

    async fn record_outcomes(&self, results: &[CaseResult]) -> Result<(), WarehouseError> {
        if results.is_empty() {
            return Ok(());
        }
        let sql = self.sql(
            "INSERT INTO {schema}.outcomes AS o
                 (case_id, status, reason, verification_uuid, attempts, duplicate_of,
                  finished_at, updated_at)
             SELECT id, status, reason, uuid, attempts, duplicate_of, finished::timestamptz, now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[],
                         $6::text[], $7::text[])
                  AS t(id, status, reason, uuid, attempts, duplicate_of, finished)
             ORDER BY id
             ON CONFLICT (case_id) DO UPDATE
                 SET status = EXCLUDED.status, reason = EXCLUDED.reason,
                     verification_uuid = EXCLUDED.verification_uuid,
                     attempts = EXCLUDED.attempts, duplicate_of = EXCLUDED.duplicate_of,
                     finished_at = EXCLUDED.finished_at, updated_at = now()
                 WHERE o.status <> 'sent'
                   AND (o.status, o.reason, o.verification_uuid, o.attempts,
                        o.duplicate_of, o.finished_at)
                       IS DISTINCT FROM
                       (EXCLUDED.status, EXCLUDED.reason, EXCLUDED.verification_uuid,
                        EXCLUDED.attempts, EXCLUDED.duplicate_of, EXCLUDED.finished_at)",
        );

        // One statement cannot touch a row twice, so a batch holding two
        // results for one case keeps one: a `sent` if there is one, else the
        // latest.
        let mut best: HashMap<&str, &CaseResult> = HashMap::new();
        for result in results {
            let slot = best.entry(result.case_id.as_str()).or_insert(result);
            if slot.status != Status::Sent {
                *slot = result;
            }
        }
        let mut rows: Vec<&CaseResult> = best.into_values().collect();
        rows.sort_by(|a, b| a.case_id.cmp(&b.case_id));

        let ids: Vec<&str> = rows.iter().map(|r| r.case_id.as_str()).collect();
        let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
        let uuids: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.verification_uuid.as_deref())
            .collect();
        let attempts: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.attempts).unwrap_or(i32::MAX))
            .collect();
        let duplicate_of: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.duplicate_of.as_ref().map(CaseId::as_str))
            .collect();
        let finished: Vec<String> = rows.iter().map(|r| r.finished_at.to_string()).collect();

        self.retrying_conflicts(|| {
            self.with_client(async |client| {
                client
                    .execute(
                        &sql,
                        &[
                            &ids,
                            &statuses,
                            &reasons,
                            &uuids,
                            &attempts,
                            &duplicate_of,
                            &finished,
                        ],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn reopen(
        &self,
        cases: &[CaseId],
        window_days: u32,
    ) -> Result<Vec<Reopened>, WarehouseError> {
        let read_sql = self.sql(
            "SELECT case_id, status, phone_e164, episode_date::text
             FROM {schema}.outcomes
             WHERE case_id = ANY($1)
             ORDER BY case_id
             FOR UPDATE",
        );
        let claim_sql = self.sql(
            "UPDATE {schema}.outcomes
             SET status = 'queued', reason = NULL, duplicate_of = NULL, finished_at = NULL,
                 claimed_at = now(), published_at = now(), updated_at = now()
             WHERE case_id = ANY($1) AND status IN ('queued', 'failed')",
        );
        let duplicate_sql = self.sql(
            "UPDATE {schema}.outcomes o
             SET status = 'duplicate', reason = $3, duplicate_of = t.of,
                 finished_at = now(), updated_at = now()
             FROM UNNEST($1::text[], $2::text[]) AS t(id, of)
             WHERE o.case_id = t.id AND o.status IN ('queued', 'failed')",
        );
        let ids: Vec<&str> = cases.iter().map(CaseId::as_str).collect();

        self.retrying_conflicts(|| {
            self.with_client(async |client| {
                let tx = self.claim_transaction(client).await?;

                // Only a case still queued or failed is taken back; any
                // other outcome stands.
                let mut answers: HashMap<String, Reopened> = HashMap::new();
                let mut candidates = Vec::new();
                for row in tx.query(&read_sql, &[&ids]).await? {
                    let id: String = row.get(0);
                    let status = Status::parse(row.get(1));
                    if !matches!(status, Some(Status::Queued | Status::Failed)) {
                        let status = status.ok_or_else(|| {
                            WarehouseError::BadData(format!(
                                "the outcome of case {id} has an unknown status"
                            ))
                        })?;
                        answers.insert(id, Reopened::Final(status));
                        continue;
                    }
                    let case_id = CaseId::new(id.clone()).map_err(|_| {
                        WarehouseError::BadData("an outcome row has an unusable case id".into())
                    })?;
                    let phone = row
                        .get::<_, Option<String>>(2)
                        .and_then(|p| E164::from_e164(&p).ok());
                    let episode_date = parse_date(row.get(3)).ok().flatten();
                    candidates.push(Candidate {
                        request: CheckRequest {
                            case_id,
                            phone: None,
                            test_date: None,
                            symptom_date: None,
                            test_type: None,
                        },
                        phone,
                        episode_date,
                    });
                }

                let texting = self.read_texting(&tx, &candidates).await?;
                let decisions = plan_claims(&candidates, texting, window_days);
                let mut claimed = Vec::new();
                let (mut duplicates, mut originals) = (Vec::new(), Vec::new());
                for (candidate, decision) in candidates.iter().zip(decisions) {
                    let id = candidate.request.case_id.as_str().to_owned();
                    let answer = match decision {
                        Decision::Claim => {
                            claimed.push(id.clone());
                            Reopened::Claimed
                        }
                        Decision::Duplicate { of } => {
                            duplicates.push(id.clone());
                            originals.push(of.as_str().to_owned());
                            Reopened::Duplicate { of }
                        }
                        Decision::Defer => Reopened::Waiting,
                    };
                    answers.insert(id, answer);
                }
                if !claimed.is_empty() {
                    tx.execute(&claim_sql, &[&claimed]).await?;
                }
                if !duplicates.is_empty() {
                    tx.execute(
                        &duplicate_sql,
                        &[&duplicates, &originals, &DUPLICATE_REASON],
                    )
                    .await?;
                }
                tx.commit().await?;

                Ok(cases
                    .iter()
                    .map(|id| {
                        answers
                            .get(id.as_str())
                            .cloned()
                            .unwrap_or(Reopened::Unknown)
                    })
                    .collect())
            })
        })
        .await
    }

    async fn outcome_counts(&self) -> Result<OutcomeCounts, WarehouseError> {
        let sql = self.sql(
            "SELECT o.status, count(*)
             FROM {schema}.cases c
             LEFT JOIN {schema}.outcomes o ON o.case_id = c.case_id
             GROUP BY o.status",
        );
        let rows = self
            .with_client(async |client| Ok(client.query(&sql, &[]).await?))
            .await?;
        let mut counts = OutcomeCounts::default();
        for row in rows {
            let status: Option<String> = row.get(0);
            let n = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
            match status {
                None => counts.pending = n,
                Some(status) => {
                    counts.by_status.insert(status, n);
                }
            }
        }
        Ok(counts)
    }
}

/// Rows of one claim-step insert, as parallel arrays.
#[derive(Default)]
struct FinalRows {
    ids: Vec<String>,
    statuses: Vec<String>,
    reasons: Vec<Option<String>>,
    duplicate_of: Vec<Option<String>>,
    phones: Vec<Option<String>>,
    episodes: Vec<Option<String>>,
}

impl FinalRows {
    fn push(
        &mut self,
        candidate: &Candidate,
        status: Option<Status>,
        reason: Option<&str>,
        duplicate_of: Option<&str>,
    ) {
        self.ids.push(candidate.request.case_id.as_str().to_owned());
        self.statuses
            .push(status.unwrap_or(Status::Queued).as_str().to_owned());
        self.reasons.push(reason.map(str::to_owned));
        self.duplicate_of.push(duplicate_of.map(str::to_owned));
        self.phones
            .push(candidate.phone.as_ref().map(|p| p.as_str().to_owned()));
        self.episodes
            .push(candidate.episode_date.map(|d| d.to_string()));
    }

    fn push_raw(&mut self, id: &str, status: Status, reason: &str) {
        self.ids.push(id.to_owned());
        self.statuses.push(status.as_str().to_owned());
        self.reasons.push(Some(reason.to_owned()));
        self.duplicate_of.push(None);
        self.phones.push(None);
        self.episodes.push(None);
    }
}
