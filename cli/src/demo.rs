//! `canotify demo`: the whole pipeline on this machine in one command. It
//! makes its own schema and queue prefix on the local PostgreSQL and
//! RabbitMQ, starts the simulators, seeds cases, runs the producer, the
//! workers and the writer as real child processes, shows progress, and ends
//! with a summary counted from the outcome table and the simulator's SMS
//! ledger.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use canotify_common::Status;
use canotify_common::config::parse_duration;
use canotify_common::warehouse::OutcomeCounts;
use canotify_simulators::{twilio, verification};
use serde::Serialize;

use crate::ledger;
use crate::stack::{LocalArgs, PeakRss, Stack, StackOptions};

/// The one-text-per-person window the demo's producer uses, in days.
pub const WINDOW_DAYS: u32 = 14;

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

    #[command(flatten)]
    pub local: LocalArgs,
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
    let mut stack = Stack::start(StackOptions {
        name: "demo",
        cases: args.cases,
        local: args.local.clone(),
        retry_delays: RETRY_DELAYS,
        twilio: twilio::TwilioConfig::default(),
        verification: verification::VerificationConfig::default(),
        worker_env: Vec::new(),
    })
    .await?;

    let started = Instant::now();
    let outcome = async {
        stack.start_writer()?;
        for _ in 0..args.workers {
            stack.start_worker()?;
        }
        stack.start_producer()?;
        watch_progress(&args, &mut stack, started).await
    }
    .await;
    let elapsed = started.elapsed();
    let peak = stack.children.peak_rss();
    stack.children.stop().await;

    let counts = stack.counts().await?;
    let mut summary = Summary::from_counts(&counts, &stack.verification.ledger());
    summary.paid_lookups = stack.twilio.paid_lookups();
    summary.workers = args.workers;
    summary.elapsed_s = (elapsed.as_secs_f64() * 100.0).round() / 100.0;
    summary.cases_per_s = ((summary.cases as f64 / elapsed.as_secs_f64()) * 10.0).round() / 10.0;
    summary.peak_rss_kib = peak;

    stack
        .finish(args.local.keep, outcome.is_ok() && summary.passed())
        .await;
    outcome?;
    Ok(summary)
}

/// Prints progress until every case is resolved, a child dies, or time
/// runs out.
async fn watch_progress(
    args: &DemoArgs,
    stack: &mut Stack,
    started: Instant,
) -> anyhow::Result<()> {
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(dead) = stack.children.exited() {
            anyhow::bail!("{dead}");
        }
        let (unresolved, line) = stack.progress(started.elapsed()).await?;
        if unresolved == 0 || last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            stack.say(&line);
        }
        if unresolved == 0 {
            return Ok(());
        }
        if started.elapsed() > args.timeout {
            stack.say(&format!(
                "timed out after {:?} with {unresolved} cases unresolved",
                args.timeout
            ));
            return Ok(());
        }
    }
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
