//! The worker: the middle of producer -> worker -> writer, and the only
//! process that can cause a text. It takes cases from the checks queue,
//! normalises each phone to E.164, asks Twilio Lookup whether the number can
//! take an SMS, asks the verification server to issue codes in batches of up
//! to ten, and publishes one result per case for the writer. Run as many
//! replicas as the upstream limits allow; they share nothing but the broker.

pub mod consume;
pub mod core;
pub mod lookup;
pub mod shared_cache;
pub mod verification;

use std::sync::Arc;
use std::time::Duration;

use canotify_common::broker::{self, BrokerError};
use canotify_common::config::{BrokerArgs, parse_duration};
use canotify_common::phone::Region;
use canotify_common::telemetry::LogArgs;
use canotify_common::{Secret, Shutdown, http, metrics, timezone};
use tracing::{info, warn};

pub use crate::consume::{ConsumeOptions, SessionEnd};
pub use crate::core::{Disposition, Fatal, Gate, Incoming, Settings, Worker};
use crate::lookup::LookupClient;
use crate::shared_cache::SharedLookupCache;
use crate::verification::VerificationClient;
use canotify_common::telemetry::Chain;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "canotify-worker",
    version,
    about = "Checks phones and issues verification codes"
)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Base URL of Twilio Lookup.
    #[arg(
        long,
        env = "CANOTIFY_TWILIO_URL",
        default_value = "https://lookups.twilio.com"
    )]
    pub twilio_url: String,

    /// Twilio Account SID (or API key SID) for Lookup.
    #[arg(long, env = "CANOTIFY_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: String,

    /// Twilio Auth Token (or API key secret).
    #[arg(long, env = "CANOTIFY_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Secret,

    /// Twilio line types that can take the SMS, comma-separated.
    #[arg(
        long,
        env = "CANOTIFY_ACCEPTED_LINE_TYPES",
        default_value = "mobile,nonFixedVoip,fixedVoip",
        value_delimiter = ','
    )]
    pub accepted_line_types: Vec<String>,

    /// Base URL of the verification server's admin API.
    #[arg(
        long,
        env = "CANOTIFY_VERIFICATION_URL",
        default_value = "https://adminapi.encv.org"
    )]
    pub verification_url: String,

    /// Admin API key of the verification server realm.
    #[arg(long, env = "CANOTIFY_VERIFICATION_API_KEY", hide_env_values = true)]
    pub verification_api_key: Secret,

    /// Key of the hash that turns a case id into its verification uuid.
    /// Keep it fixed for the deployment's life: a new key lets old cases be
    /// texted again.
    #[arg(long, env = "CANOTIFY_UUID_KEY", hide_env_values = true)]
    pub uuid_key: Secret,

    /// IANA time zone of the residents, for the server's tzOffset.
    #[arg(
        long,
        env = "CANOTIFY_TIME_ZONE",
        default_value = "America/Los_Angeles"
    )]
    pub time_zone: String,

    /// Region of phone numbers written without a country code (ISO 3166).
    #[arg(long, env = "CANOTIFY_DEFAULT_REGION", default_value = "US")]
    pub default_region: Region,

    /// SMS template label of the realm; the realm's default when unset.
    #[arg(long, env = "CANOTIFY_SMS_TEMPLATE_LABEL")]
    pub sms_template_label: Option<String>,

    /// Cases a worker holds unacked at once.
    #[arg(long, env = "CANOTIFY_PREFETCH", default_value_t = 100)]
    pub prefetch: u16,

    /// Twilio lookups in flight at once in this worker.
    #[arg(long, env = "CANOTIFY_LOOKUP_CONCURRENCY", default_value_t = 10)]
    pub lookup_concurrency: usize,

    /// Batch-issue calls in flight at once in this worker.
    #[arg(long, env = "CANOTIFY_ISSUE_CONCURRENCY", default_value_t = 4)]
    pub issue_concurrency: usize,

    /// Longest wait for a batch to fill up to ten cases.
    #[arg(long, env = "CANOTIFY_BATCH_LINGER", default_value = "250ms", value_parser = parse_duration)]
    pub batch_linger: Duration,

    /// How long a lookup answer is trusted for the same phone number.
    #[arg(long, env = "CANOTIFY_LOOKUP_CACHE_AGE", default_value = "24h", value_parser = parse_duration)]
    pub lookup_cache_age: Duration,

    /// PostgreSQL URL of a lookup cache shared by every worker replica, so
    /// a case redelivered to another worker pays for no second lookup;
    /// each worker keeps its own cache only when unset.
    #[arg(long, env = "CANOTIFY_LOOKUP_CACHE_URL", hide_env_values = true)]
    pub lookup_cache_url: Option<Secret>,

    /// Schema of the shared lookup cache table.
    #[arg(long, env = "CANOTIFY_LOOKUP_CACHE_SCHEMA", default_value = "canotify")]
    pub lookup_cache_schema: String,

    /// How long issuing pauses when the realm's daily quota is spent.
    #[arg(long, env = "CANOTIFY_QUOTA_PAUSE", default_value = "1h", value_parser = parse_duration)]
    pub quota_pause: Duration,

    /// The realm's verification requests per minute, shared by all workers
    /// (each takes this divided by the consumers the broker reports).
    #[arg(long, env = "CANOTIFY_VERIFICATION_REQUESTS_PER_MINUTE")]
    pub verification_requests_per_minute: Option<u32>,

    /// Address for `GET /metrics` (Prometheus text format); none when unset.
    #[arg(long, env = "CANOTIFY_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// How long in-flight cases may take to finish after SIGTERM.
    #[arg(long, env = "CANOTIFY_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Timeout of one upstream request. An issue call can take 30 s when
    /// the server retries its SMS provider.
    #[arg(long, env = "CANOTIFY_HTTP_TIMEOUT", default_value = "40s", value_parser = parse_duration)]
    pub http_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("broker operation failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("stopped taking work: {0}")]
    Fatal(Arc<Fatal>),
}

impl WorkerConfig {
    /// Builds the worker's core from the configuration.
    pub fn build_worker(&self) -> Result<Worker, WorkerError> {
        let topology = self.broker.topology()?;
        if self.uuid_key.expose().len() < 16 {
            return Err(WorkerError::Config(
                "CANOTIFY_UUID_KEY must be at least 16 characters".to_owned(),
            ));
        }
        let time_zone = timezone::load(&self.time_zone).map_err(WorkerError::Config)?;
        let http = http::client(self.http_timeout)
            .map_err(|err| WorkerError::Config(format!("cannot build the HTTP client: {err}")))?;

        let lookup = LookupClient::new(
            http.clone(),
            &self.twilio_url,
            &self.twilio_account_sid,
            self.twilio_auth_token.clone(),
            self.accepted_line_types.iter().map(|t| t.trim().to_owned()),
        );
        let verification = VerificationClient::new(
            http,
            &self.verification_url,
            self.verification_api_key.clone(),
        );
        let settings = Settings {
            uuid_key: self.uuid_key.clone(),
            time_zone,
            region: self.default_region,
            sms_template_label: self.sms_template_label.clone(),
            max_attempts: topology.max_attempts(),
            lookup_concurrency: self.lookup_concurrency,
            lookup_cache_age: self.lookup_cache_age,
            quota_pause: self.quota_pause,
            requests_per_minute: self.verification_requests_per_minute,
        };
        Ok(Worker::new(lookup, verification, settings))
    }
}

/// Runs one worker until shutdown, connecting again whenever the broker is
/// lost. A worker stopped by a configuration fault stays up without taking
/// work, so it is not restarted into the same error again and again, and
/// reports the fault when it is shut down.
pub async fn run(config: WorkerConfig, shutdown: Shutdown) -> Result<(), WorkerError> {
    let mut worker = config.build_worker()?;
    if let Some(url) = &config.lookup_cache_url {
        let cache = SharedLookupCache::new(
            url,
            &config.lookup_cache_schema,
            &config.uuid_key,
            config.lookup_cache_age,
        )
        .map_err(WorkerError::Config)?;
        worker = worker.with_shared_cache(cache);
    }
    let worker = Arc::new(worker);
    let topology = config.broker.topology()?;
    let options = ConsumeOptions {
        prefetch: config.prefetch.max(1),
        linger: config.batch_linger,
        issue_concurrency: config.issue_concurrency,
        shutdown_grace: config.shutdown_grace,
    };

    if let Some(addr) = config.metrics_listen {
        let bound = metrics::serve(worker.metrics().clone(), addr, shutdown.clone())
            .await
            .map_err(|err| WorkerError::Config(format!("cannot serve metrics on {addr}: {err}")))?;
        info!(%bound, "serving metrics on /metrics");
    }

    while let Some(connection) =
        broker::connect_with_retry(&config.broker.amqp_url, "canotify-worker", &shutdown).await
    {
        let end =
            consume::consume(worker.clone(), &connection, &topology, &options, &shutdown).await;
        broker::close_connection(&connection, "worker stopping").await;
        match end {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::BrokerLost(err)) | Err(err) => {
                warn!(error = %Chain(&err), "lost the broker; unacked cases go back to the queue; connecting again");
            }
        }
    }

    info!("worker stopped");
    match &*worker.gate().borrow() {
        Gate::Stopped(fatal) => Err(WorkerError::Fatal(fatal.clone())),
        _ => Ok(()),
    }
}
