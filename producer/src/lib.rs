//! The producer: the first step of producer -> worker -> writer. It claims
//! pending cases in the warehouse, publishes one persistent message per case
//! on the checks queue, and marks each claim published once the broker has
//! confirmed the message. A message the broker did not confirm gives its
//! claim back, so the next pass takes the case again.
//!
//! A claim older than the claim age is taken again: a producer that died
//! between claiming and publishing loses nothing, and a case published twice
//! is harmless because the worker's verification uuid stops a second text.

use std::time::Duration;

use canotify_common::broker::{self, Outgoing, Publisher, Topology};
use canotify_common::config::{BrokerArgs, WarehouseArgs, parse_duration};
use canotify_common::phone::Region;
use canotify_common::telemetry::{Chain, LogArgs, PROGRESS_EVERY, Progress};
use canotify_common::warehouse::{ClaimRequest, PostgresWarehouse, Warehouse, WarehouseError};
use canotify_common::{CaseId, Shutdown};
use tracing::{debug, info, warn};

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "canotify-producer",
    version,
    about = "Publishes pending cases for the workers"
)]
pub struct ProducerConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Make one pass over the pending cases and exit (for cron).
    #[arg(long, env = "CANOTIFY_ONCE")]
    pub once: bool,

    /// Time between passes when not `--once`.
    #[arg(long, env = "CANOTIFY_POLL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// A claim older than this is taken again. Keep it well above the time
    /// a case can spend queued and retried.
    #[arg(long, env = "CANOTIFY_CLAIM_AGE", default_value = "6h", value_parser = parse_duration)]
    pub claim_age: Duration,

    /// Cases claimed and published per warehouse round trip.
    #[arg(long, env = "CANOTIFY_PAGE_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,

    /// Two cases of one phone whose test dates are at most this many days
    /// apart are one infection, and get one text.
    #[arg(long, env = "CANOTIFY_DEDUP_WINDOW_DAYS", default_value_t = 14)]
    pub dedup_window_days: u32,

    /// Region of phone numbers written without a country code (ISO 3166).
    #[arg(long, env = "CANOTIFY_DEFAULT_REGION", default_value = "US")]
    pub default_region: Region,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error("broker operation failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0} cases could not be published; their claims were given back for the next pass")]
    Unpublished(usize),
}

/// What one pass over the pending cases did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub published: usize,
    pub duplicates: usize,
    pub deferred: usize,
    pub refused: usize,
    pub unpublished: usize,
}

/// Runs the producer against the PostgreSQL warehouse until shutdown (or
/// after one pass with `--once`).
pub async fn run(config: ProducerConfig, shutdown: Shutdown) -> Result<(), ProducerError> {
    // From cron, an unreachable broker is an error to report now, before
    // the warehouse is touched; a polling producer waits for it instead.
    if config.once {
        let reachable = broker::connect(&config.broker.amqp_url, "canotify-producer").await?;
        broker::close_connection(&reachable, "reachable").await;
    }

    let warehouse =
        PostgresWarehouse::connect(&config.warehouse.database_url, &config.warehouse.schema)
            .await?;
    run_with(config, warehouse, shutdown).await
}

/// Runs the producer against any warehouse.
pub async fn run_with<W: Warehouse>(
    config: ProducerConfig,
    warehouse: W,
    shutdown: Shutdown,
) -> Result<(), ProducerError> {
    warehouse.migrate().await?;

    let topology = config.broker.topology()?;
    info!(queue = %topology.checks(), once = config.once, "producer started");

    'connection: while let Some(connection) =
        broker::connect_with_retry(&config.broker.amqp_url, "canotify-producer", &shutdown).await
    {
        let publisher = match Publisher::new(&connection).await {
            Ok(publisher) => publisher,
            Err(err) => {
                warn!(error = %Chain(&err), "cannot open a channel; connecting again");
                continue;
            }
        };
        if let Err(err) = topology.declare(publisher.channel()).await {
            warn!(error = %Chain(&err), "cannot declare the topology; connecting again");
            continue;
        }

        loop {
            let summary = match pass(&config, &warehouse, &publisher, &topology, &shutdown).await {
                Ok(summary) => summary,
                // A polling producer outlives a database outage: what it had
                // claimed but not published is taken again after the claim age.
                Err(ProducerError::Warehouse(err)) if err.is_retryable() && !config.once => {
                    warn!(error = %Chain(&err), retry_in = ?config.poll_interval, "warehouse unavailable; will try again");
                    tokio::select! {
                        _ = shutdown.requested() => break 'connection,
                        _ = tokio::time::sleep(config.poll_interval) => continue,
                    }
                }
                Err(err) => return Err(err),
            };
            info!(
                published = summary.published,
                duplicates = summary.duplicates,
                deferred = summary.deferred,
                refused = summary.refused,
                "pass finished"
            );
            let broker_lost = !connection.status().connected();
            if summary.unpublished > 0 {
                warn!(
                    unpublished = summary.unpublished,
                    "some cases were not published; their claims were given back"
                );
            }

            if config.once {
                broker::close_connection(&connection, "done").await;
                if summary.unpublished > 0 {
                    return Err(ProducerError::Unpublished(summary.unpublished));
                }
                return Ok(());
            }
            if broker_lost {
                warn!("lost the broker; connecting again");
                continue 'connection;
            }

            tokio::select! {
                _ = shutdown.requested() => {
                    broker::close_connection(&connection, "shutdown").await;
                    break 'connection;
                }
                _ = tokio::time::sleep(config.poll_interval) => {}
            }
        }
    }

    info!("producer stopped");
    Ok(())
}

/// One pass over every pending case, page by page.
pub async fn pass<W: Warehouse>(
    config: &ProducerConfig,
    warehouse: &W,
    publisher: &Publisher,
    topology: &Topology,
    shutdown: &Shutdown,
) -> Result<PassSummary, ProducerError> {
    let mut summary = PassSummary::default();
    let mut progress = Progress::new("cases published so far in this pass", PROGRESS_EVERY);
    let mut request = ClaimRequest {
        after: None,
        limit: config.page_size as usize,
        claim_age: config.claim_age,
        window_days: config.dedup_window_days,
        region: config.default_region,
    };

    loop {
        let page = warehouse.claim_page(&request).await?;
        summary.duplicates += page.duplicates;
        summary.deferred += page.deferred;
        summary.refused += page.refused;

        if !page.claimed.is_empty() {
            let ids: Vec<CaseId> = page.claimed.iter().map(|c| c.case_id.clone()).collect();
            let messages = page
                .claimed
                .iter()
                .map(|case| {
                    Outgoing::json(&topology.checks(), case).with_message_id(case.case_id.as_str())
                })
                .collect();
            let confirms = publisher.publish_all(messages).await;

            let (mut confirmed, mut failed) = (Vec::new(), Vec::new());
            for (id, confirm) in ids.into_iter().zip(confirms) {
                match confirm {
                    Ok(()) => confirmed.push(id),
                    Err(err) => {
                        debug!(case_id = %id, error = %Chain(&err), "case not published");
                        failed.push(id);
                    }
                }
            }
            warehouse.mark_published(&confirmed).await?;
            if !failed.is_empty() {
                warehouse.release_claims(&failed).await?;
            }
            summary.published += confirmed.len();
            summary.unpublished += failed.len();
            progress.add(confirmed.len() as u64);
            debug!(published = confirmed.len(), "page published");
        }

        match page.next {
            Some(next) if !shutdown.is_requested() => request.after = Some(next),
            _ => break,
        }
    }
    Ok(summary)
}
