//! A whole pipeline for one test: its own schema and queue prefix on the
//! machine's PostgreSQL and RabbitMQ, the two simulators on port 0, and the
//! producer, workers and writer running in-process through their library
//! `run` functions. Dropping it removes the schema and the queues.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use canotify_common::broker::{self, Outgoing, Publisher, Topology};
use canotify_common::shutdown::ShutdownTrigger;
use canotify_common::warehouse::{
    NewCase, OutcomeCounts, OutcomeRow, PostgresWarehouse, Warehouse,
};
use canotify_common::{Secret, Shutdown};
use canotify_producer::ProducerConfig;
use canotify_simulators::{twilio, verification};
use canotify_worker::WorkerConfig;
use canotify_writer::WriterConfig;
use clap::Parser;
use tokio::task::JoinHandle;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const UUID_KEY: &str = "test-uuid-key-0123456789";

static COUNTER: AtomicU32 = AtomicU32::new(0);

type Task = JoinHandle<Result<(), String>>;

pub struct Pipeline {
    pub name: String,
    pub schema: String,
    pub prefix: String,
    pub warehouse: PostgresWarehouse,
    pub twilio: twilio::TwilioSimulator,
    pub verification: verification::VerificationSimulator,
    pub topology: Topology,
    /// The retry delays every process is given; one attempt more than
    /// there are delays.
    pub retry_delays: String,
    /// Where the processes reach RabbitMQ and PostgreSQL; a test may put a
    /// proxy in between.
    pub amqp_url: String,
    pub database_url: String,
    tasks: Vec<(String, ShutdownTrigger, Task)>,
}

impl Pipeline {
    /// A fresh, empty pipeline; `name` keeps its schema and queues apart.
    pub async fn new(name: &str) -> Self {
        show_logs_of_failed_tests();
        let unique = format!(
            "{}_{}_{}",
            name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let schema = format!("t_{unique}");
        let prefix = format!("test-{unique}");
        let warehouse = PostgresWarehouse::connect(&Secret::new(DATABASE_URL), &schema)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432");
        warehouse.migrate().await.unwrap();

        let (twilio, verification) = canotify_simulators::start_local().await.unwrap();

        let mut pipeline = Self {
            name: name.to_owned(),
            topology: Topology::new(&prefix, broker::QueueType::Quorum).unwrap(),
            schema,
            prefix,
            warehouse,
            twilio,
            verification,
            retry_delays: "100ms,200ms".to_owned(),
            tasks: Vec::new(),
            amqp_url: AMQP_URL.to_owned(),
            database_url: DATABASE_URL.to_owned(),
        };
        pipeline.set_retry_delays("100ms,200ms");
        pipeline
    }

    /// Sends the processes' broker traffic through a proxy on `port`.
    pub fn route_broker_through(&mut self, port: u16) {
        self.amqp_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    }

    /// Sends the processes' database traffic through a proxy on `port`.
    pub fn route_database_through(&mut self, port: u16) {
        self.database_url = format!("postgres://postgres@127.0.0.1:{port}/test");
    }

    /// Sets the retry delays, and the topology's wait queues with them.
    pub fn set_retry_delays(&mut self, delays: &str) {
        self.retry_delays = delays.to_owned();
        let parsed: Vec<Duration> = delays
            .split(',')
            .map(|d| canotify_common::config::parse_duration(d).unwrap())
            .collect();
        self.topology = Topology::new(&self.prefix, broker::QueueType::Quorum)
            .unwrap()
            .with_retry_delays(&parsed);
    }

    fn common_args(&self) -> Vec<String> {
        [
            "--amqp-url",
            &self.amqp_url,
            "--queue-prefix",
            &self.prefix,
            "--log",
            "warn",
            "--retry-delays",
            &self.retry_delays,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub fn producer_config(&self, extra: &[&str]) -> ProducerConfig {
        let mut args = vec!["canotify-producer".to_owned()];
        args.extend(self.common_args());
        args.extend(
            [
                "--database-url",
                &self.database_url,
                "--schema",
                &self.schema,
                "--poll-interval",
                "200ms",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        ProducerConfig::try_parse_from(args).unwrap()
    }

    pub fn worker_config(&self, extra: &[&str]) -> WorkerConfig {
        let mut args = vec!["canotify-worker".to_owned()];
        args.extend(self.common_args());
        let sim_twilio = twilio::TwilioConfig::default();
        let sim_verification = verification::VerificationConfig::default();
        let defaults = [
            "--twilio-url",
            &self.twilio.url(),
            "--twilio-account-sid",
            &sim_twilio.account_sid,
            "--twilio-auth-token",
            &sim_twilio.auth_token,
            "--verification-url",
            &self.verification.url(),
            "--verification-api-key",
            &sim_verification.api_key,
            "--uuid-key",
            UUID_KEY,
            "--batch-linger",
            "50ms",
            // Well inside the 30 s `stop_all` allows each process.
            "--shutdown-grace",
            "10s",
            "--lookup-cache-url",
            &self.database_url,
            "--lookup-cache-schema",
            &self.schema,
        ];
        // A flag given in `extra` replaces the default of the same name.
        for pair in defaults.chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        WorkerConfig::try_parse_from(args).unwrap()
    }

    pub fn writer_config(&self) -> WriterConfig {
        let mut args = vec!["canotify-writer".to_owned()];
        args.extend(self.common_args());
        args.extend(
            [
                "--database-url",
                &self.database_url,
                "--schema",
                &self.schema,
                "--write-linger",
                "50ms",
            ]
            .map(String::from),
        );
        WriterConfig::try_parse_from(args).unwrap()
    }

    fn spawn<F>(&mut self, what: &str, run: impl FnOnce(Shutdown) -> F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(run(shutdown));
        self.tasks.push((what.to_owned(), trigger, task));
    }

    pub fn start_producer(&mut self, extra: &[&str]) {
        let config = self.producer_config(extra);
        self.spawn("producer", |shutdown| async move {
            canotify_producer::run(config, shutdown)
                .await
                .map_err(|e| e.to_string())
        });
    }

    pub fn start_worker(&mut self, extra: &[&str]) {
        let config = self.worker_config(extra);
        self.spawn("worker", |shutdown| async move {
            canotify_worker::run(config, shutdown)
                .await
                .map_err(|e| e.to_string())
        });
    }

    pub fn start_writer(&mut self) {
        let config = self.writer_config();
        self.spawn("writer", |shutdown| async move {
            canotify_writer::run(config, shutdown)
                .await
                .map_err(|e| e.to_string())
        });
    }

    /// Producer, `workers` workers and the writer.
    pub fn start(&mut self, workers: usize) {
        self.start_writer();
        for _ in 0..workers {
            self.start_worker(&[]);
        }
        self.start_producer(&[]);
    }

    pub async fn seed(&self, cases: &[NewCase]) {
        self.warehouse.insert_cases(cases).await.unwrap();
    }

    /// Waits until no case is left unresolved, failing the test if that
    /// takes longer than `limit` or a process stops on an error.
    pub async fn wait_resolved(&mut self, limit: Duration) -> OutcomeCounts {
        let started = Instant::now();
        loop {
            self.fail_on_crashed_task();
            let counts = self.warehouse.outcome_counts().await.unwrap();
            if counts.unresolved() == 0 {
                return counts;
            }
            assert!(
                started.elapsed() < limit,
                "{}: {} cases still unresolved after {limit:?}: {counts:?}",
                self.name,
                counts.unresolved()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the checks and results queues are empty and stay so.
    pub async fn wait_queues_drained(&mut self, limit: Duration) {
        let started = Instant::now();
        let mut quiet_since: Option<Instant> = None;
        loop {
            self.fail_on_crashed_task();
            let depth = self.depth(&self.topology.checks()).await
                + self.depth(&self.topology.results()).await;
            if depth == 0 {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    return;
                }
            } else {
                quiet_since = None;
            }
            assert!(
                started.elapsed() < limit,
                "{}: queues not drained after {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn fail_on_crashed_task(&mut self) {
        for (what, _, task) in &self.tasks {
            assert!(
                !task.is_finished(),
                "{}: the {what} stopped early",
                self.name
            );
        }
    }

    /// Messages ready in a queue (declared first, so a missing queue is 0).
    pub async fn depth(&self, queue: &str) -> u32 {
        let connection = broker::connect(&Secret::new(AMQP_URL), "test")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        self.topology.declare(&channel).await.unwrap();
        let declared = broker::inspect_queue(&channel, queue).await.unwrap();
        let _ = connection.close(200, "".into()).await;
        declared.message_count()
    }

    /// Publishes messages straight onto a queue, as a producer or a broker
    /// redelivery would.
    pub async fn publish(&self, messages: Vec<Outgoing>) {
        let connection = broker::connect(&Secret::new(AMQP_URL), "test")
            .await
            .unwrap();
        let publisher = Publisher::new(&connection).await.unwrap();
        self.topology.declare(publisher.channel()).await.unwrap();
        for confirm in publisher.publish_all(messages).await {
            confirm.unwrap();
        }
        let _ = connection.close(200, "".into()).await;
    }

    pub async fn outcomes(&self) -> Vec<OutcomeRow> {
        self.warehouse.outcomes().await.unwrap()
    }

    /// Stops every process and says how each ended.
    pub async fn stop_all(&mut self) -> Vec<(String, Result<(), String>)> {
        for (_, trigger, _) in &self.tasks {
            trigger.trigger();
        }
        let mut ends = Vec::new();
        for (what, _, task) in self.tasks.drain(..) {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap_or_else(|_| panic!("the {what} did not stop within 30 s"))
                .unwrap();
            ends.push((what, result));
        }
        ends
    }

    /// Stops every process and checks that each stopped cleanly.
    pub async fn stop(&mut self) {
        for (what, result) in self.stop_all().await {
            assert_eq!(result, Ok(()), "the {what} stopped on an error");
        }
    }

    /// Waits until `ready` holds, failing the test after `limit`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        ready: impl AsyncFn(&Pipeline) -> bool,
    ) {
        let started = Instant::now();
        loop {
            self.fail_on_crashed_task();
            if ready(self).await {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "{}: {what} did not happen within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes the schema and queues (also done on drop, if a test failed).
    pub async fn cleanup(mut self) {
        self.stop().await;
        remove(&self.schema, &self.topology).await;
        self.schema.clear();
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.schema.is_empty() {
            return;
        }
        let schema = self.schema.clone();
        let topology = self.topology.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(remove(&schema, &topology));
        })
        .join();
    }
}

async fn remove(schema: &str, topology: &Topology) {
    if let Ok(warehouse) = PostgresWarehouse::connect(&Secret::new(DATABASE_URL), schema).await {
        let _ = warehouse.drop_schema().await;
    }
    if let Ok(connection) = broker::connect(&Secret::new(AMQP_URL), "test-cleanup").await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = topology.delete(&channel).await;
        }
        let _ = connection.close(200, "".into()).await;
    }
}

/// Sends the processes' log lines to the test's captured output, which
/// is shown when the test fails. `CANOTIFY_TEST_LOG` sets the filter.
fn show_logs_of_failed_tests() {
    let filter = std::env::var("CANOTIFY_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}

/// A mobile case with a distinct number for each `n`, tested `days_ago`.
pub fn mobile_case(id: &str, n: u32, days_ago: i64) -> NewCase {
    NewCase {
        case_id: id.to_owned(),
        // The last two digits 00-79 are mobile for the Twilio simulator.
        phone: Some(format!("916{:03}{:04}", 200 + n / 80, n % 80)),
        test_date: Some(canotify_cli::seed::today_utc() - jiff::Span::new().days(days_ago)),
        symptom_date: None,
        test_type: Some("confirmed".to_owned()),
    }
}
