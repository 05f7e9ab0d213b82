//! The writer: the last step of producer -> worker -> writer. It consumes
//! results and writes them to the warehouse in batches (whichever comes
//! first: the batch size or the linger), one statement per batch, and acks
//! the whole batch with `multiple` only after the commit. A result that
//! arrives twice changes nothing; a `sent` outcome is never overwritten.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use canotify_common::broker::{self, BrokerError, Publisher, Topology};
use canotify_common::config::{BrokerArgs, WarehouseArgs, parse_duration};
use canotify_common::telemetry::{Chain, LogArgs, PROGRESS_EVERY, Progress};
use canotify_common::warehouse::{PostgresWarehouse, Warehouse, WarehouseError};
use canotify_common::{CaseResult, Shutdown};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tracing::{debug, error, info, warn};

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "canotify-writer",
    version,
    about = "Writes case outcomes back to the warehouse"
)]
pub struct WriterConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Results written per statement, at most.
    #[arg(long = "write-batch-size", env = "CANOTIFY_WRITE_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_size: u16,

    /// Longest a result waits for its batch to fill.
    #[arg(long = "write-linger", env = "CANOTIFY_WRITE_LINGER", default_value = "500ms", value_parser = parse_duration)]
    pub linger: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("broker operation failed: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Runs the writer against the PostgreSQL warehouse until shutdown.
pub async fn run(config: WriterConfig, shutdown: Shutdown) -> Result<(), WriterError> {
    let warehouse =
        PostgresWarehouse::connect(&config.warehouse.database_url, &config.warehouse.schema)
            .await?;
    run_with(config, warehouse, shutdown).await
}

/// Runs the writer against any warehouse until shutdown.
pub async fn run_with<W: Warehouse>(
    config: WriterConfig,
    warehouse: W,
    shutdown: Shutdown,
) -> Result<(), WriterError> {
    warehouse.migrate().await?;

    let topology = config.broker.topology()?;
    let mut progress = Progress::new("results written", PROGRESS_EVERY);
    while let Some(connection) =
        broker::connect_with_retry(&config.broker.amqp_url, "canotify-writer", &shutdown).await
    {
        let end = session(
            &config,
            &warehouse,
            &connection,
            &topology,
            &shutdown,
            &mut progress,
        )
        .await;
        broker::close_connection(&connection, "writer stopping").await;
        match end {
            Ok(()) if shutdown.is_requested() => break,
            Ok(()) => warn!("the results consumer ended; connecting again"),
            Err(WriterError::Amqp(err)) => {
                warn!(error = %Chain(&err), "lost the broker; unacked results will be redelivered; connecting again");
            }
            Err(err) => return Err(err),
        }
    }

    info!(written = progress.total(), "writer stopped");
    Ok(())
}

/// Consumes and writes on one connection until shutdown (Ok) or until the
/// broker is lost (an AMQP error).
async fn session<W: Warehouse>(
    config: &WriterConfig,
    warehouse: &W,
    connection: &lapin::Connection,
    topology: &Topology,
    shutdown: &Shutdown,
    progress: &mut Progress,
) -> Result<(), WriterError> {
    let publisher = Publisher::new(connection).await?;
    topology.declare(publisher.channel()).await?;

    // Prefetch twice the batch, so the next batch fills while one is written.
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(
            config.batch_size.saturating_mul(2),
            BasicQosOptions { global: false },
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            topology.results().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(queue = %topology.results(), batch_size = config.batch_size, "writer consuming");

    let batch_size = usize::from(config.batch_size);
    loop {
        // Wait for the first result of a batch, then fill until the size or
        // the linger.
        let first = tokio::select! {
            _ = shutdown.requested() => return Ok(()),
            next = consumer.next() => next,
        };
        let mut batch = match first {
            Some(Ok(delivery)) => vec![delivery],
            Some(Err(err)) => return Err(err.into()),
            None => return Ok(()),
        };
        let deadline = tokio::time::Instant::now() + config.linger;
        let mut lost = None;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => batch.push(delivery),
                Ok(Some(Err(err))) => {
                    lost = Some(err);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }

        // What was read before a failure is still written: the write is
        // idempotent, and the redelivered copies will change nothing.
        let written = write_batch(warehouse, &publisher, topology, batch, shutdown).await?;
        progress.add(written as u64);
        if let Some(err) = lost {
            return Err(err.into());
        }
    }
}

/// Writes one batch and acks it. Unreadable results go to the dead-letter
/// queue first; the rest are written in one statement, retried while the
/// database is away; the batch is acked only after the commit.
async fn write_batch<W: Warehouse>(
    warehouse: &W,
    publisher: &Publisher,
    topology: &Topology,
    batch: Vec<Delivery>,
    shutdown: &Shutdown,
) -> Result<usize, WriterError> {
    let mut results = Vec::with_capacity(batch.len());
    let mut sources = Vec::with_capacity(batch.len());
    let mut letters = Vec::new();
    for delivery in &batch {
        match serde_json::from_slice::<CaseResult>(&delivery.data) {
            Ok(result) => {
                results.push(result);
                sources.push(delivery);
            }
            Err(err) => {
                warn!(error = %Chain(&err), bytes = delivery.data.len(), "unreadable result; dead-lettering it");
                letters.push(topology.dead_letter(
                    &delivery.data,
                    delivery.properties.headers().as_ref(),
                    &topology.results(),
                    "writer",
                    "unreadable_message",
                ));
            }
        }
    }

    if !letters.is_empty() {
        let confirms = publisher.publish_all(letters).await;
        if confirms.iter().any(Result::is_err) {
            warn!("a dead letter was not confirmed; the batch goes back to the queue");
            nack_all(&batch).await;
            return Ok(0);
        }
    }

    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        match warehouse.record_outcomes(&results).await {
            Ok(()) => break,
            Err(err) if err.is_retryable() && !shutdown.is_requested() => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(10));
                warn!(error = %Chain(&err), ?wait, results = results.len(), "warehouse unavailable; holding the batch");
                tokio::time::sleep(wait).await;
            }
            Err(err) if err.is_retryable() => {
                // Shutting down with the database away: leave the batch to
                // be redelivered.
                nack_all(&batch).await;
                return Ok(0);
            }
            Err(err) => {
                error!(error = %Chain(&err), results = results.len(), "the warehouse refused a batch; writing its results one by one");
                if !write_one_by_one(warehouse, publisher, topology, &results, &sources).await {
                    nack_all(&batch).await;
                    return Ok(0);
                }
                break;
            }
        }
    }

    // Deliveries on one channel arrive in tag order, so the last tag acks
    // exactly this batch.
    if let Some(last) = batch.last()
        && let Err(err) = last.ack(BasicAckOptions { multiple: true }).await
    {
        // The results will come again and be written again, changing nothing.
        warn!(error = %Chain(&err), "could not ack a written batch; it will be redelivered");
    }
    debug!(results = results.len(), "batch written");
    Ok(results.len())
}

/// Writes each result alone, so one the warehouse refuses cannot hold back
/// the others; the refused ones become dead letters. False if a dead letter
/// could not be published (the caller then gives the batch back).
async fn write_one_by_one<W: Warehouse>(
    warehouse: &W,
    publisher: &Publisher,
    topology: &Topology,
    results: &[CaseResult],
    sources: &[&Delivery],
) -> bool {
    for (result, delivery) in results.iter().zip(sources) {
        if let Err(err) = warehouse
            .record_outcomes(std::slice::from_ref(result))
            .await
        {
            error!(case_id = %result.case_id, error = %Chain(&err), "the warehouse refused a result; dead-lettering it");
            let letter = topology.dead_letter(
                &delivery.data,
                delivery.properties.headers().as_ref(),
                &topology.results(),
                "writer",
                "warehouse_refused",
            );
            if publisher.publish(letter).await.is_err() {
                return false;
            }
        }
    }
    true
}

async fn nack_all(batch: &[Delivery]) {
    if let Some(last) = batch.last() {
        let _ = last
            .nack(BasicNackOptions {
                multiple: true,
                requeue: true,
            })
            .await;
    }
}
