//! Lookup answers shared by every worker replica, in a small PostgreSQL
//! table, so a case redelivered to another worker after a crash does not
//! pay for its lookup again. A phone is kept only as an HMAC under the
//! deployment's uuid key, never in the clear. The cache only saves money:
//! when its database is away, the worker looks numbers up as if it were
//! empty, and tries the database again after a pause.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use canotify_common::telemetry::Chain;
use canotify_common::warehouse::quote_schema;
use canotify_common::{E164, Secret};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tracing::warn;

use crate::lookup::LineCheck;

/// How long one cache query may take before the worker goes without.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to the cache, and creating its table, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the worker goes without the cache after failing to reach it,
/// so a database that is away costs one connection attempt, not one per
/// batch.
const OUTAGE_PAUSE: Duration = Duration::from_secs(10);

pub struct SharedLookupCache {
    url: Secret,
    schema: String,
    quoted_schema: String,
    table: String,
    key: Secret,
    max_age: Duration,
    client: Mutex<Option<Client>>,
    /// No connection is tried before this, after one failed.
    retry_at: std::sync::Mutex<Option<Instant>>,
    warned: AtomicBool,
}

impl SharedLookupCache {
    /// Names the cache; it connects (and creates its table if missing) on
    /// first use, so a cache database that is away at start delays nothing.
    pub fn new(
        url: &Secret,
        schema: &str,
        key: &Secret,
        max_age: Duration,
    ) -> Result<Self, String> {
        let quoted = quote_schema(schema).map_err(|err| err.to_string())?;
        Ok(Self {
            url: url.clone(),
            schema: schema.to_owned(),
            table: format!("{quoted}.lookup_cache"),
            quoted_schema: quoted,
            key: key.clone(),
            max_age,
            client: Mutex::new(None),
            retry_at: std::sync::Mutex::new(None),
            warned: AtomicBool::new(false),
        })
    }

    /// The recent answers any worker stored for these phones, in one query.
    pub async fn get_many(&self, phones: &[E164]) -> HashMap<E164, LineCheck> {
        if phones.is_empty() {
            return HashMap::new();
        }
        let sql = format!(
            "SELECT phone_key, verdict, reason FROM {} WHERE phone_key = ANY($1)
             AND looked_up_at > now() - make_interval(secs => $2)",
            self.table
        );
        let by_key: HashMap<String, &E164> =
            phones.iter().map(|p| (self.phone_key(p), p)).collect();
        let keys: Vec<&str> = by_key.keys().map(String::as_str).collect();
        let age = self.max_age.as_secs_f64();
        let Some(rows) = self
            .run(async |client| client.query(&sql, &[&keys, &age]).await)
            .await
        else {
            return HashMap::new();
        };

        let mut found = HashMap::new();
        for row in rows {
            let key: String = row.get(0);
            let verdict: String = row.get(1);
            let reason: String = row.get::<_, Option<String>>(2).unwrap_or_default();
            let answer = match verdict.as_str() {
                "textable" => LineCheck::Textable,
                "not_textable" => LineCheck::NotTextable { reason },
                "invalid" => LineCheck::Invalid { reason },
                _ => continue,
            };
            if let Some(phone) = by_key.get(&key) {
                found.insert((*phone).clone(), answer);
            }
        }
        found
    }

    /// Stores answers for every worker to reuse, in one statement.
    pub async fn put_many(&self, answers: &[(E164, LineCheck)]) {
        if answers.is_empty() {
            return;
        }
        let sql = format!(
            "INSERT INTO {} (phone_key, verdict, reason, looked_up_at)
             SELECT key, verdict, reason, now()
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(key, verdict, reason)
             ON CONFLICT (phone_key) DO UPDATE
                 SET verdict = EXCLUDED.verdict, reason = EXCLUDED.reason,
                     looked_up_at = EXCLUDED.looked_up_at",
            self.table
        );
        // One statement cannot touch a row twice; and rows taken in key
        // order cannot deadlock with another replica's upsert.
        let mut rows: BTreeMap<String, (&str, Option<&str>)> = BTreeMap::new();
        for (phone, answer) in answers {
            let row = match answer {
                LineCheck::Textable => ("textable", None),
                LineCheck::NotTextable { reason } => ("not_textable", Some(reason.as_str())),
                LineCheck::Invalid { reason } => ("invalid", Some(reason.as_str())),
            };
            rows.insert(self.phone_key(phone), row);
        }
        let keys: Vec<&str> = rows.keys().map(String::as_str).collect();
        let verdicts: Vec<&str> = rows.values().map(|(v, _)| *v).collect();
        let reasons: Vec<Option<&str>> = rows.values().map(|(_, r)| *r).collect();
        self.run(async |client| client.execute(&sql, &[&keys, &verdicts, &reasons]).await)
            .await;
    }

    fn phone_key(&self, phone: &E164) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC accepts a key of any length");
        mac.update(b"canotify lookup cache v1\0");
        mac.update(phone.as_str().as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Runs one query on a live connection; `None` (with one warning per
    /// outage) when the cache database cannot answer.
    async fn run<T>(
        &self,
        query: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Option<T> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let retry_at = *self.retry_at.lock().expect("never poisoned");
            if retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, self.open())
                .await
                .unwrap_or_else(|_| {
                    Err("the lookup cache did not accept a connection in time".into())
                });
            match opened {
                Ok(client) => *guard = Some(client),
                Err(err) => {
                    self.warn_once(&err);
                    *self.retry_at.lock().expect("never poisoned") =
                        Some(Instant::now() + OUTAGE_PAUSE);
                    return None;
                }
            }
        }
        let client = guard.as_ref().expect("a connection was just opened");
        match tokio::time::timeout(QUERY_TIMEOUT, query(client)).await {
            Ok(Ok(value)) => {
                self.warned.store(false, Ordering::Relaxed);
                Some(value)
            }
            Ok(Err(err)) => {
                self.warn_once(&Chain(&err).to_string());
                *guard = None;
                None
            }
            Err(_) => {
                self.warn_once("the lookup cache did not answer in time");
                *guard = None;
                None
            }
        }
    }

    fn warn_once(&self, error: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            warn!(
                error,
                "shared lookup cache unavailable; looking numbers up without it"
            );
        }
    }
}

impl SharedLookupCache {
    /// Connects and makes sure the table exists. Replicas start together,
    /// and `CREATE ... IF NOT EXISTS` races with itself, so the set-up runs
    /// under an advisory lock.
    async fn open(&self) -> Result<Client, String> {
        let url = &self.url;
        let (mut client, connection) =
            tokio_postgres::connect(url.expose(), NoTls)
                .await
                .map_err(|err| {
                    format!(
                        "cannot reach the lookup cache at {}: {}",
                        canotify_common::config::redact_url(url.expose()),
                        Chain(&err)
                    )
                })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });

        let setup = format!(
            "CREATE SCHEMA IF NOT EXISTS {};
             CREATE TABLE IF NOT EXISTS {} (
                 phone_key    text PRIMARY KEY,
                 verdict      text NOT NULL,
                 reason       text,
                 looked_up_at timestamptz NOT NULL DEFAULT now())",
            self.quoted_schema, self.table
        );
        let lock_key = format!("canotify lookup cache {}", self.schema);
        let failed = |err: tokio_postgres::Error| {
            format!("cannot create the lookup cache table: {}", Chain(&err))
        };
        let tx = client.transaction().await.map_err(failed)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_key],
        )
        .await
        .map_err(failed)?;
        tx.batch_execute(&setup).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(client)
    }
}
