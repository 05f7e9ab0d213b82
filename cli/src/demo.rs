//! `canotify demo`: the whole pipeline on this machine in one command. It
//! makes its own schema and queue prefix on the local PostgreSQL and
//! RabbitMQ, starts the simulators, seeds cases, runs the producer, the
//! workers and the writer as real child processes, shows progress, and ends
//! with a summary counted from the outcome table and the simulator's SMS
//! ledger.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use canotify_common::broker::{self, QueueType, Topology};
use canotify_common::config::parse_duration;
use canotify_common::warehouse::{OutcomeCounts, PostgresWarehouse, Warehouse};
use canotify_common::{Secret, Status};
use canotify_simulators::{twilio, verification};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::{ledger, preflight, seed};

/// The one-text-per-person window the demo's producer uses, in days.
const WINDOW_DAYS: u32 = 14;

/// The demo's retry delays: short, so a demo with faults ends in minutes.
const RETRY_DELAYS: &str = "1s,5s,15s";

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Cases to seed and run.
    #[arg(long, default_value_t = 1000)]
    pub cases: usize,

    /// Worker processes to run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,

    /// End with the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,

    /// Give up if the cases are not all resolved by then.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Type of the demo's work queues.
    #[arg(long, value_enum, default_value = "quorum")]
    pub queue_type: QueueType,

    /// Seed of the case generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Keep the demo's schema and queues afterwards, for inspection.
    #[arg(long)]
    pub keep: bool,

    /// Folder for the processes' logs, kept afterwards; by default a
    /// temporary folder, removed after a run that passed.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,

    /// Log filter of the producer, workers and writer.
    #[arg(long, default_value = "info")]
    pub child_log: String,

    /// Folder holding canotify-producer, canotify-worker and canotify-writer;
    /// by default the folder of this `canotify` binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// AMQP URL of the local RabbitMQ.
    #[arg(
        long,
        env = "CANOTIFY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true
    )]
    pub amqp_url: Secret,

    /// URL of the local PostgreSQL.
    #[arg(
        long,
        env = "CANOTIFY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_default_value = true
    )]
    pub database_url: Secret,
}

/// Peak resident memory of each child, in KiB.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeakRss {
    pub producer: Option<u64>,
    pub writer: Option<u64>,
    pub workers: Vec<Option<u64>>,
}

/// The demo's figures, every one counted from the warehouse or the ledger.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub cases: u64,
    pub sent: u64,
    pub invalid_phone: u64,
    pub not_textable: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub failed: u64,
    pub unresolved: u64,
    pub sms_sent: u64,
    pub duplicate_sms: u64,
    pub paid_lookups: u64,
    pub workers: u32,
    pub elapsed_s: f64,
    pub cases_per_s: f64,
    pub peak_rss_kib: PeakRss,
}

impl Summary {
    pub fn from_counts(counts: &OutcomeCounts, ledger: &[verification::SmsRecord]) -> Self {
        Self {
            cases: counts.total(),
            sent: counts.get(Status::Sent),
            invalid_phone: counts.get(Status::InvalidPhone),
            not_textable: counts.get(Status::NotTextable),
            duplicate: counts.get(Status::Duplicate),
            rejected: counts.get(Status::Rejected),
            failed: counts.get(Status::Failed),
            unresolved: counts.unresolved(),
            sms_sent: ledger.len() as u64,
            duplicate_sms: ledger::duplicate_sms(ledger, WINDOW_DAYS),
            paid_lookups: 0,
            workers: 0,
            elapsed_s: 0.0,
            cases_per_s: 0.0,
            peak_rss_kib: PeakRss::default(),
        }
    }

    /// A run passes when every case is resolved and nobody was texted twice.
    pub fn passed(&self) -> bool {
        self.unresolved == 0 && self.duplicate_sms == 0
    }
}

/// Runs the demo and returns its summary; the caller prints it.
pub async fn run(args: DemoArgs) -> anyhow::Result<Summary> {
    preflight::check(&args.amqp_url, &args.database_url)
        .await
        .map_err(anyhow::Error::msg)?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow::anyhow!("cannot tell where the canotify binary is"))?,
    };
    for name in ["canotify-producer", "canotify-worker", "canotify-writer"] {
        anyhow::ensure!(
            bin_dir.join(name).is_file(),
            "{name} is not in {}; build every binary first with `cargo build --release`",
            bin_dir.display()
        );
    }

    // A name of its own, so the demo can share the broker and database.
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        jiff::Timestamp::now().as_millisecond() % 100_000_000
    );
    let schema = format!("canotify_demo_{suffix}");
    let prefix = format!("canotify-demo-{suffix}");
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("canotify-demo-{suffix}")));
    std::fs::create_dir_all(&log_dir)?;
    say(&format!(
        "demo schema {schema}, queue prefix {prefix}, logs in {}",
        log_dir.display()
    ));

    let twilio_sim =
        twilio::start(twilio::TwilioConfig::default(), ([127, 0, 0, 1], 0).into()).await?;
    let verification_sim = verification::start(
        verification::VerificationConfig::default(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await?;

    let warehouse = PostgresWarehouse::connect(&args.database_url, &schema).await?;
    warehouse.migrate().await?;
    let today = seed::today_utc();
    let cases: Vec<_> = seed::generate(args.cases, args.seed, today)
        .into_iter()
        .map(|c| c.case)
        .collect();
    warehouse.insert_cases(&cases).await?;
    say(&format!("seeded {} cases", cases.len()));

    let env = ChildEnv {
        amqp_url: args.amqp_url.clone(),
        database_url: args.database_url.clone(),
        schema: schema.clone(),
        prefix: prefix.clone(),
        queue_type: args.queue_type,
        twilio_url: twilio_sim.url(),
        verification_url: verification_sim.url(),
        log_filter: args.child_log.clone(),
    };
    let started = Instant::now();
    let mut children = Children::default();
    let outcome = async {
        children.writer =
            Some(env.spawn(&bin_dir, "canotify-writer", &log_dir.join("writer.log"))?);
        for i in 0..args.workers {
            children.workers.push(env.spawn(
                &bin_dir,
                "canotify-worker",
                &log_dir.join(format!("worker-{i}.log")),
            )?);
        }
        children.producer =
            Some(env.spawn(&bin_dir, "canotify-producer", &log_dir.join("producer.log"))?);
        watch_progress(&args, &warehouse, &mut children, started).await
    }
    .await;
    let elapsed = started.elapsed();
    let peak = children.peak_rss();
    children.stop().await;

    let counts = warehouse.outcome_counts().await?;
    let mut summary = Summary::from_counts(&counts, &verification_sim.ledger());
    summary.paid_lookups = twilio_sim.paid_lookups();
    summary.workers = args.workers;
    summary.elapsed_s = (elapsed.as_secs_f64() * 100.0).round() / 100.0;
    summary.cases_per_s = ((summary.cases as f64 / elapsed.as_secs_f64()) * 10.0).round() / 10.0;
    summary.peak_rss_kib = peak;

    if args.keep {
        say(&format!("kept schema {schema} and queues {prefix}.*"));
    } else {
        warehouse.drop_schema().await?;
        if let Ok(connection) = broker::connect(&args.amqp_url, "canotify-demo").await {
            if let (Ok(channel), Ok(topology)) = (
                connection.create_channel().await,
                Topology::new(&prefix, args.queue_type)
                    .map(|t| t.with_retry_delays(&retry_delays())),
            ) {
                let _ = topology.delete(&channel).await;
            }
            let _ = connection.close(200, "demo done".into()).await;
        }
    }
    twilio_sim.shutdown().await;
    verification_sim.shutdown().await;

    // The children's logs are worth keeping only when something went wrong.
    if outcome.is_ok() && summary.passed() && !args.keep && args.log_dir.is_none() {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        say(&format!("the processes' logs are in {}", log_dir.display()));
    }
    outcome?;
    Ok(summary)
}

fn retry_delays() -> Vec<Duration> {
    RETRY_DELAYS
        .split(',')
        .map(|d| parse_duration(d).expect("the demo's delays parse"))
        .collect()
}

/// Prints progress until every case is resolved, a child dies, or time
/// runs out.
async fn watch_progress(
    args: &DemoArgs,
    warehouse: &PostgresWarehouse,
    children: &mut Children,
    started: Instant,
) -> anyhow::Result<()> {
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(dead) = children.exited() {
            anyhow::bail!(
                "{dead}; see its log in the demo's log folder (run again with --keep to keep it)"
            );
        }
        let counts = warehouse.outcome_counts().await?;
        let resolved = counts.total() - counts.unresolved();
        let done = counts.unresolved() == 0;
        if done || last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let elapsed = started.elapsed().as_secs_f64();
            say(&format!(
                "{resolved}/{} resolved, {} sent, {:.0} cases/s",
                counts.total(),
                counts.get(Status::Sent),
                resolved as f64 / elapsed.max(0.001)
            ));
        }
        if done {
            return Ok(());
        }
        if started.elapsed() > args.timeout {
            say(&format!(
                "timed out after {:?} with {} cases unresolved",
                args.timeout,
                counts.unresolved()
            ));
            return Ok(());
        }
    }
}

/// Progress goes to stderr, so `--json` leaves stdout to the summary.
fn say(line: &str) {
    eprintln!("canotify demo: {line}");
}

/// What every child is told, through the same variables compose sets.
struct ChildEnv {
    amqp_url: Secret,
    database_url: Secret,
    schema: String,
    prefix: String,
    queue_type: QueueType,
    twilio_url: String,
    verification_url: String,
    log_filter: String,
}

impl ChildEnv {
    fn spawn(&self, bin_dir: &Path, name: &str, log: &Path) -> anyhow::Result<Child> {
        let log_file = std::fs::File::create(log)?;
        let mut command = Command::new(bin_dir.join(name));

        // Nothing from the caller's own CANOTIFY_* settings leaks in.
        for (key, _) in std::env::vars() {
            if key.starts_with("CANOTIFY_") {
                command.env_remove(key);
            }
        }
        let queue_type = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        command
            .env("CANOTIFY_AMQP_URL", self.amqp_url.expose())
            .env("CANOTIFY_QUEUE_PREFIX", &self.prefix)
            .env("CANOTIFY_QUEUE_TYPE", queue_type)
            .env("CANOTIFY_DATABASE_URL", self.database_url.expose())
            .env("CANOTIFY_SCHEMA", &self.schema)
            .env("CANOTIFY_POLL_INTERVAL", "1s")
            .env("CANOTIFY_LOG", &self.log_filter)
            .env("CANOTIFY_RETRY_DELAYS", RETRY_DELAYS)
            .env("CANOTIFY_TWILIO_URL", &self.twilio_url)
            .env(
                "CANOTIFY_TWILIO_ACCOUNT_SID",
                twilio::TwilioConfig::default().account_sid,
            )
            .env(
                "CANOTIFY_TWILIO_AUTH_TOKEN",
                twilio::TwilioConfig::default().auth_token,
            )
            .env("CANOTIFY_VERIFICATION_URL", &self.verification_url)
            .env(
                "CANOTIFY_VERIFICATION_API_KEY",
                verification::VerificationConfig::default().api_key,
            )
            .env(
                "CANOTIFY_UUID_KEY",
                format!("demo-uuid-key-{}", self.prefix),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        command
            .spawn()
            .map_err(|err| anyhow::anyhow!("cannot start {name}: {err}"))
    }
}

#[derive(Default)]
struct Children {
    producer: Option<Child>,
    writer: Option<Child>,
    workers: Vec<Child>,
}

impl Children {
    fn all(&mut self) -> impl Iterator<Item = (String, &mut Child)> {
        let named = self
            .producer
            .iter_mut()
            .map(|c| ("the producer".to_owned(), c))
            .chain(self.writer.iter_mut().map(|c| ("the writer".to_owned(), c)));
        named.chain(
            self.workers
                .iter_mut()
                .enumerate()
                .map(|(i, c)| (format!("worker {i}"), c)),
        )
    }

    /// Names the first child that has exited, with its status.
    fn exited(&mut self) -> Option<String> {
        self.all().find_map(|(name, child)| match child.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited early ({status})")),
            _ => None,
        })
    }

    fn peak_rss(&mut self) -> PeakRss {
        let rss = |child: &Child| child.id().and_then(peak_rss_kib);
        PeakRss {
            producer: self.producer.as_ref().and_then(rss),
            writer: self.writer.as_ref().and_then(rss),
            workers: self.workers.iter().map(rss).collect(),
        }
    }

    /// SIGTERM to every child, then a grace period, then SIGKILL.
    async fn stop(&mut self) {
        for (_, child) in self.all() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) with a pid this process spawned and has not
                // yet reaped; it touches no memory.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for (_, child) in self.all() {
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// VmHWM of a live process, from /proc (Linux only).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The summary as an operator reads it.
pub fn render(summary: &Summary) -> String {
    let mut lines = BTreeMap::new();
    lines.insert(0, format!("cases          {}", summary.cases));
    lines.insert(1, format!("  sent           {}", summary.sent));
    lines.insert(2, format!("  invalid_phone  {}", summary.invalid_phone));
    lines.insert(3, format!("  not_textable   {}", summary.not_textable));
    lines.insert(4, format!("  duplicate      {}", summary.duplicate));
    lines.insert(5, format!("  rejected       {}", summary.rejected));
    lines.insert(6, format!("  failed         {}", summary.failed));
    lines.insert(7, format!("  unresolved     {}", summary.unresolved));
    lines.insert(8, format!("SMS sent       {}", summary.sms_sent));
    lines.insert(9, format!("duplicate SMS  {}", summary.duplicate_sms));
    lines.insert(10, format!("paid lookups   {}", summary.paid_lookups));
    lines.insert(
        11,
        format!(
            "elapsed        {:.2} s with {} workers",
            summary.elapsed_s, summary.workers
        ),
    );
    lines.insert(
        12,
        format!("throughput     {:.1} cases/s", summary.cases_per_s),
    );
    lines.into_values().collect::<Vec<_>>().join("\n")
}
