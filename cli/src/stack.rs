//! A whole local stack for `canotify demo` and `canotify chaos`: its own
//! schema and queue prefix on the local PostgreSQL and RabbitMQ, the two
//! simulators in this process, seeded cases, and the producer, workers and
//! writer as real child processes wired by the same environment variables
//! compose sets. Removing it leaves the broker and database as they were.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use canotify_common::broker::{self, QueueType, Topology};
use canotify_common::config::parse_duration;
use canotify_common::warehouse::{PostgresWarehouse, Warehouse};
use canotify_common::{Secret, Status};
use canotify_simulators::{twilio, verification};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::{preflight, seed};

/// Where a local stack runs and what it keeps, shared by `demo` and
/// `chaos`.
#[derive(Clone, Debug, clap::Args)]
pub struct LocalArgs {
    /// Type of the work queues.
    #[arg(long, value_enum, default_value = "quorum")]
    pub queue_type: QueueType,

    /// Seed of the case generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Keep the schema, queues and logs afterwards, for inspection.
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

/// What a stack is made of.
pub struct StackOptions {
    /// `demo` or `chaos`: names the schema, the prefix and the log lines.
    pub name: &'static str,
    pub cases: usize,
    pub local: LocalArgs,
    pub retry_delays: &'static str,
    pub twilio: twilio::TwilioConfig,
    pub verification: verification::VerificationConfig,
    /// Extra variables for the workers only.
    pub worker_env: Vec<(&'static str, String)>,
}

pub struct Stack {
    pub schema: String,
    pub prefix: String,
    pub log_dir: PathBuf,
    pub warehouse: PostgresWarehouse,
    pub twilio: twilio::TwilioSimulator,
    pub verification: verification::VerificationSimulator,
    pub topology: Topology,
    pub children: Children,
    /// The AMQP URL the children use; a proxy may stand in front of the
    /// broker.
    pub child_amqp_url: Secret,
    options: StackOptions,
    bin_dir: PathBuf,
    workers_started: usize,
}

impl Stack {
    /// Checks the broker and database, starts the simulators, and seeds.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        preflight::check(&options.local.amqp_url, &options.local.database_url)
            .await
            .map_err(anyhow::Error::msg)?;
        let bin_dir = match &options.local.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow::anyhow!("cannot tell where the canotify binary is"))?,
        };
        for binary in ["canotify-producer", "canotify-worker", "canotify-writer"] {
            anyhow::ensure!(
                bin_dir.join(binary).is_file(),
                "{binary} is not in {}; build every binary first with `cargo build --release`",
                bin_dir.display()
            );
        }

        // A name of its own, so the stack can share the broker and database.
        let suffix = format!(
            "{}_{}",
            std::process::id(),
            jiff::Timestamp::now().as_millisecond() % 100_000_000
        );
        let schema = format!("canotify_{}_{suffix}", options.name);
        let prefix = format!("canotify-{}-{suffix}", options.name);
        let log_dir = options.local.log_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("canotify-{}-{suffix}", options.name))
        });
        std::fs::create_dir_all(&log_dir)?;
        let delays: Vec<Duration> = options
            .retry_delays
            .split(',')
            .map(|d| parse_duration(d).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        let topology = Topology::new(&prefix, options.local.queue_type)?.with_retry_delays(&delays);

        let twilio = twilio::start(options.twilio.clone(), ([127, 0, 0, 1], 0).into()).await?;
        let verification =
            verification::start(options.verification.clone(), ([127, 0, 0, 1], 0).into()).await?;
        let warehouse = PostgresWarehouse::connect(&options.local.database_url, &schema).await?;
        warehouse.migrate().await?;
        let cases: Vec<_> = seed::generate(options.cases, options.local.seed, seed::today_utc())
            .into_iter()
            .map(|c| c.case)
            .collect();
        warehouse.insert_cases(&cases).await?;

        let stack = Self {
            child_amqp_url: options.local.amqp_url.clone(),
            schema,
            prefix,
            log_dir,
            warehouse,
            twilio,
            verification,
            topology,
            children: Children::default(),
            options,
            bin_dir,
            workers_started: 0,
        };
        stack.say(&format!(
            "schema {}, queue prefix {}, {} cases seeded, logs in {}",
            stack.schema,
            stack.prefix,
            cases.len(),
            stack.log_dir.display()
        ));
        Ok(stack)
    }

    /// Progress goes to stderr, so `--json` leaves stdout to the summary.
    pub fn say(&self, line: &str) {
        eprintln!("canotify {}: {line}", self.options.name);
    }

    pub fn start_writer(&mut self) -> anyhow::Result<()> {
        self.children.writer = Some(self.spawn("canotify-writer", "writer.log", &[])?);
        Ok(())
    }

    pub fn start_producer(&mut self) -> anyhow::Result<()> {
        self.children.producer = Some(self.spawn("canotify-producer", "producer.log", &[])?);
        Ok(())
    }

    /// Starts one more worker, with a log file of its own.
    pub fn start_worker(&mut self) -> anyhow::Result<()> {
        let log = format!("worker-{}.log", self.workers_started);
        self.workers_started += 1;
        // The workers share their lookup answers through the stack's own
        // schema, so a case redelivered after a kill is not paid for twice.
        let mut extra = self.options.worker_env.clone();
        extra.push((
            "CANOTIFY_LOOKUP_CACHE_URL",
            self.options.local.database_url.expose().to_owned(),
        ));
        extra.push(("CANOTIFY_LOOKUP_CACHE_SCHEMA", self.schema.clone()));
        let child = self.spawn("canotify-worker", &log, &extra)?;
        self.children.workers.push(child);
        Ok(())
    }

    /// Counts cases by status.
    pub async fn counts(&self) -> anyhow::Result<canotify_common::warehouse::OutcomeCounts> {
        Ok(self.warehouse.outcome_counts().await?)
    }

    /// A progress line: resolved of total, sent, rate.
    pub async fn progress(&self, elapsed: Duration) -> anyhow::Result<(u64, String)> {
        let counts = self.counts().await?;
        let resolved = counts.total() - counts.unresolved();
        let line = format!(
            "{resolved}/{} resolved, {} sent, {:.0} cases/s",
            counts.total(),
            counts.get(Status::Sent),
            resolved as f64 / elapsed.as_secs_f64().max(0.001)
        );
        Ok((counts.unresolved(), line))
    }

    /// Stops the children, then removes the schema, queues and (after a
    /// run that passed, unless asked to keep them) the logs.
    pub async fn finish(mut self, keep: bool, passed: bool) {
        self.children.stop().await;
        if keep {
            self.say(&format!(
                "kept schema {} and queues {}.*",
                self.schema, self.prefix
            ));
        } else {
            let _ = self.warehouse.drop_schema().await;
            if let Ok(connection) =
                broker::connect(&self.options.local.amqp_url, "canotify-cleanup").await
            {
                if let Ok(channel) = connection.create_channel().await {
                    let _ = self.topology.delete(&channel).await;
                }
                broker::close_connection(&connection, "done").await;
            }
        }
        if passed && !keep && self.options.local.log_dir.is_none() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        } else {
            self.say(&format!(
                "the processes' logs are in {}",
                self.log_dir.display()
            ));
        }
        self.twilio.shutdown().await;
        self.verification.shutdown().await;
    }

    fn spawn(
        &self,
        binary: &str,
        log: &str,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<Child> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(log))?;
        let mut command = Command::new(self.bin_dir.join(binary));

        // Nothing from the caller's own CANOTIFY_* settings leaks in.
        for (key, _) in std::env::vars() {
            if key.starts_with("CANOTIFY_") {
                command.env_remove(key);
            }
        }
        let queue_type = match self.options.local.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        command
            .env("CANOTIFY_AMQP_URL", self.child_amqp_url.expose())
            .env("CANOTIFY_QUEUE_PREFIX", &self.prefix)
            .env("CANOTIFY_QUEUE_TYPE", queue_type)
            .env("CANOTIFY_RETRY_DELAYS", self.options.retry_delays)
            .env(
                "CANOTIFY_DATABASE_URL",
                self.options.local.database_url.expose(),
            )
            .env("CANOTIFY_SCHEMA", &self.schema)
            .env("CANOTIFY_POLL_INTERVAL", "1s")
            .env("CANOTIFY_LOG", &self.options.local.child_log)
            .env("CANOTIFY_TWILIO_URL", self.twilio.url())
            .env(
                "CANOTIFY_TWILIO_ACCOUNT_SID",
                &self.options.twilio.account_sid,
            )
            .env(
                "CANOTIFY_TWILIO_AUTH_TOKEN",
                &self.options.twilio.auth_token,
            )
            .env("CANOTIFY_VERIFICATION_URL", self.verification.url())
            .env(
                "CANOTIFY_VERIFICATION_API_KEY",
                &self.options.verification.api_key,
            )
            .env(
                "CANOTIFY_UUID_KEY",
                format!("local-uuid-key-{}", self.prefix),
            )
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        command
            .spawn()
            .map_err(|err| anyhow::anyhow!("cannot start {binary}: {err}"))
    }
}

/// Peak resident memory of each child, in KiB.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeakRss {
    pub producer: Option<u64>,
    pub writer: Option<u64>,
    pub workers: Vec<Option<u64>>,
}

#[derive(Default)]
pub struct Children {
    pub producer: Option<Child>,
    pub writer: Option<Child>,
    pub workers: Vec<Child>,
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
    pub fn exited(&mut self) -> Option<String> {
        self.all().find_map(|(name, child)| match child.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited early ({status})")),
            _ => None,
        })
    }

    pub fn peak_rss(&mut self) -> PeakRss {
        let rss = |child: &Child| child.id().and_then(peak_rss_kib);
        PeakRss {
            producer: self.producer.as_ref().and_then(rss),
            writer: self.writer.as_ref().and_then(rss),
            workers: self.workers.iter().map(rss).collect(),
        }
    }

    /// SIGKILLs worker `index` and forgets it.
    pub async fn kill_worker(&mut self, index: usize) {
        let mut child = self.workers.remove(index);
        let _ = child.kill().await;
    }

    /// SIGTERM to every child, then a grace period, then SIGKILL.
    pub async fn stop(&mut self) {
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
            if tokio::time::timeout(Duration::from_secs(40), child.wait())
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
