//! `canotify chaos`: the pipeline under the faults a health department will
//! meet, to show that nothing is lost and nobody is texted twice. Over a
//! local stack (see `stack`) it kills a random worker every few seconds and
//! starts another, cuts every broker connection twice through a proxy, has
//! the simulators fail a tenth of their answers with 500s, and holds the
//! verification server to a realistic request rate. At the end every case
//! must have a final outcome, the SMS ledger must hold no duplicate, and the
//! dead letters must be exactly the cases that ran out of attempts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canotify_common::config::{BrokerArgs, parse_duration};
use canotify_common::{Secret, Status};
use canotify_simulators::{twilio, verification};
use serde::Serialize;

use crate::dlq::DeadLetters;
use crate::ledger;
use crate::proxy::Proxy;
use crate::stack::{LocalArgs, Stack, StackOptions};

/// Short retry delays, so cases that fail come round within the run.
const RETRY_DELAYS: &str = "2s,5s,10s";

#[derive(Clone, Debug, clap::Args)]
pub struct ChaosArgs {
    /// Cases to seed and run.
    #[arg(long, default_value_t = 20_000)]
    pub cases: usize,

    /// Workers kept running (each one killed is replaced).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,

    /// End with the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,

    /// Time between worker kills.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub kill_every: Duration,

    /// The verification simulator's requests per minute (a batch is one);
    /// the reference deployment allows 60, the server's own default 120.
    #[arg(long, default_value_t = 120)]
    pub rate_limit_per_minute: u32,

    /// Fraction of lookups and of codes the simulators fail with a 500.
    #[arg(long, default_value_t = 0.1)]
    pub error_rate: f64,

    /// Give up if the cases are not all resolved by then.
    #[arg(long, default_value = "90m", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub local: LocalArgs,
}

/// What the run proved, every figure counted from the outcome table, the
/// simulators and the dead-letter queue.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosSummary {
    pub cases: u64,
    pub resolved: u64,
    /// Cases with no final outcome at the end.
    pub lost: u64,
    pub sent: u64,
    pub failed: u64,
    pub sms_sent: u64,
    pub duplicate_sms: u64,
    pub dead_letters: u64,
    /// The dead letters are exactly the `failed` cases.
    pub dead_letters_match_failed: bool,
    pub worker_kills: u64,
    pub broker_cuts: u64,
    pub paid_lookups: u64,
    pub distinct_phones: u64,
    pub elapsed_s: f64,
    pub cases_per_s: f64,
}

impl ChaosSummary {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicate_sms == 0 && self.dead_letters_match_failed
    }
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<ChaosSummary> {
    let broker_addr = broker_address(args.local.amqp_url.expose())?;
    let proxy = Proxy::start(broker_addr).await?;
    // Under the server's limit, with room for the replacements of killed
    // workers; the workers share it among themselves.
    let shared_rate = (args.rate_limit_per_minute * 3 / 4).max(1);
    let mut stack = Stack::start(StackOptions {
        name: "chaos",
        cases: args.cases,
        local: args.local.clone(),
        retry_delays: RETRY_DELAYS,
        twilio: twilio::TwilioConfig {
            error_rate: args.error_rate,
            seed: args.local.seed,
            ..twilio::TwilioConfig::default()
        },
        verification: verification::VerificationConfig {
            item_error_rate: args.error_rate,
            rate_limit_per_minute: Some(args.rate_limit_per_minute),
            seed: args.local.seed.wrapping_add(1),
            ..verification::VerificationConfig::default()
        },
        worker_env: vec![(
            "CANOTIFY_VERIFICATION_REQUESTS_PER_MINUTE",
            shared_rate.to_string(),
        )],
    })
    .await?;
    stack.child_amqp_url = Secret::new(through_proxy(args.local.amqp_url.expose(), proxy.addr()));

    let started = Instant::now();
    let mut kills = 0u64;
    let outcome = async {
        stack.start_writer()?;
        for _ in 0..args.workers {
            stack.start_worker()?;
        }
        stack.start_producer()?;
        torment(&args, &mut stack, &proxy, started, &mut kills).await
    }
    .await;
    let elapsed = started.elapsed();
    stack.children.stop().await;

    let summary = summarize(&args, &stack, &proxy, kills, elapsed).await;
    let passed = summary.as_ref().is_ok_and(ChaosSummary::passed);
    stack
        .finish(args.local.keep, outcome.is_ok() && passed)
        .await;
    outcome?;
    summary
}

/// Kills workers and cuts the broker until every case is resolved.
async fn torment(
    args: &ChaosArgs,
    stack: &mut Stack,
    proxy: &Proxy,
    started: Instant,
    kills: &mut u64,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(args.local.seed);
    let mut next_kill = Instant::now() + args.kill_every;
    let mut last_print = Instant::now();
    let total = args.cases as u64;

    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (unresolved, line) = stack.progress(started.elapsed()).await?;
        let resolved = total.saturating_sub(unresolved);
        if unresolved == 0 {
            stack.say(&line);
            return Ok(());
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            stack.say(&format!(
                "{line}; {kills} worker kills, {} broker cuts",
                proxy.cuts()
            ));
        }

        if Instant::now() >= next_kill && !stack.children.workers.is_empty() {
            let victim = rng.usize(..stack.children.workers.len());
            stack.children.kill_worker(victim).await;
            stack.start_worker()?;
            *kills += 1;
            next_kill = Instant::now() + args.kill_every;
        }
        let cuts_due = match resolved * 3 / total.max(1) {
            0 => 0,
            1 => 1,
            _ => 2,
        };
        if proxy.cuts() < cuts_due {
            stack.say("cutting every broker connection");
            proxy.cut();
        }

        if let Some(dead) = stack.children.exited() {
            anyhow::bail!("{dead}");
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

async fn summarize(
    args: &ChaosArgs,
    stack: &Stack,
    proxy: &Proxy,
    kills: u64,
    elapsed: Duration,
) -> anyhow::Result<ChaosSummary> {
    let counts = stack.counts().await?;
    let ledger_records = stack.verification.ledger();

    let failed: BTreeSet<String> = stack
        .warehouse
        .outcomes()
        .await?
        .into_iter()
        .filter(|o| o.status == Status::Failed.as_str())
        .map(|o| o.case_id)
        .collect();
    let dead_letters = DeadLetters::connect(&BrokerArgs {
        amqp_url: args.local.amqp_url.clone(),
        queue_prefix: stack.prefix.clone(),
        queue_type: args.local.queue_type,
        retry_delays: stack.topology.retry_delays().to_vec(),
    })
    .await?;
    let listing = dead_letters.list().await?;
    dead_letters.close().await;
    let lettered: BTreeSet<String> = listing
        .letters
        .iter()
        .filter_map(|l| l.case_id.clone())
        .collect();

    let cases = counts.total();
    Ok(ChaosSummary {
        cases,
        resolved: cases - counts.unresolved(),
        lost: counts.unresolved(),
        sent: counts.get(Status::Sent),
        failed: counts.get(Status::Failed),
        sms_sent: ledger_records.len() as u64,
        duplicate_sms: ledger::duplicate_sms(&ledger_records, crate::demo::WINDOW_DAYS),
        dead_letters: listing.count as u64,
        dead_letters_match_failed: lettered == failed && listing.count == failed.len(),
        worker_kills: kills,
        broker_cuts: proxy.cuts(),
        paid_lookups: stack.twilio.paid_lookups(),
        distinct_phones: stack.twilio.lookups_by_phone().len() as u64,
        elapsed_s: (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        cases_per_s: ((cases as f64 / elapsed.as_secs_f64()) * 10.0).round() / 10.0,
    })
}

/// The host and port of an AMQP URL.
fn broker_address(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let with_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    let with_port = with_port.replace("localhost", "127.0.0.1");
    with_port
        .parse()
        .map_err(|_| anyhow::anyhow!("chaos needs a broker at an IP address, not {with_port:?}"))
}

/// The same URL, pointed at the proxy.
fn through_proxy(url: &str, proxy: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let credentials = authority
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    format!("{scheme}://{credentials}{proxy}{path}")
}

/// The summary as an operator reads it.
pub fn render(summary: &ChaosSummary) -> String {
    [
        format!("cases            {}", summary.cases),
        format!("resolved         {}", summary.resolved),
        format!("lost             {}", summary.lost),
        format!("  sent           {}", summary.sent),
        format!("  failed         {}", summary.failed),
        format!("SMS sent         {}", summary.sms_sent),
        format!("duplicate SMS    {}", summary.duplicate_sms),
        format!(
            "dead letters     {} ({})",
            summary.dead_letters,
            if summary.dead_letters_match_failed {
                "exactly the failed cases"
            } else {
                "NOT the failed cases"
            }
        ),
        format!("worker kills     {}", summary.worker_kills),
        format!("broker cuts      {}", summary.broker_cuts),
        format!(
            "paid lookups     {} for {} distinct phones",
            summary.paid_lookups, summary.distinct_phones
        ),
        format!(
            "elapsed          {:.1} s, {:.1} cases/s",
            summary.elapsed_s, summary.cases_per_s
        ),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_takes_the_brokers_place_in_the_url() {
        let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap();

        assert_eq!(
            through_proxy("amqp://guest:guest@127.0.0.1:5672/%2f", proxy),
            "amqp://guest:guest@127.0.0.1:40000/%2f"
        );
        assert_eq!(
            through_proxy("amqp://localhost", proxy),
            "amqp://127.0.0.1:40000"
        );
    }

    #[test]
    fn the_broker_address_is_read_from_the_url() {
        assert_eq!(
            broker_address("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap(),
            "127.0.0.1:5672".parse().unwrap()
        );
        assert_eq!(
            broker_address("amqp://localhost").unwrap(),
            "127.0.0.1:5672".parse().unwrap()
        );
        assert!(broker_address("amqp://rabbit.internal:5672").is_err());
    }
}
