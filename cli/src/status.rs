//! `canotify status`: how the pipeline stands at a glance. For each queue
//! of the deployment (checks, the retry wait queues, results, dead letters),
//! how many messages are ready and how many consumers read it, from a
//! passive `queue_declare` that creates nothing; and from the warehouse, how
//! many cases wait to be claimed and how many stand at each outcome status.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use canotify_common::Status;
use canotify_common::broker::{self, BrokerError, Topology};
use canotify_common::config::{BrokerArgs, WarehouseArgs};
use canotify_common::warehouse::{OutcomeCounts, PostgresWarehouse, Warehouse, WarehouseError};
use lapin::Connection;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("broker operation failed: {0}")]
    Amqp(#[from] lapin::Error),
}

#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub warehouse: WarehouseArgs,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything `status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PipelineStatus {
    pub queues: Vec<QueueStatus>,
    pub schema: String,
    pub outcomes: Outcomes,
}

/// One queue; a queue not declared has neither count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    pub queue: String,
    pub declared: bool,
    /// Messages ready for a consumer (not those delivered and unacked).
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
}

/// Cases by where they stand: every status is present, 0 when none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Cases with no outcome yet: never claimed.
    pub pending: u64,
    pub by_status: BTreeMap<String, u64>,
}

impl From<OutcomeCounts> for Outcomes {
    fn from(counts: OutcomeCounts) -> Self {
        let mut by_status: BTreeMap<String, u64> = Status::ALL
            .iter()
            .map(|status| (status.as_str().to_owned(), 0))
            .collect();
        // A status this build does not know is still counted, not hidden.
        by_status.extend(counts.by_status);
        Self {
            pending: counts.pending,
            by_status,
        }
    }
}

/// Reads every queue's depth, then the warehouse's counts.
pub async fn gather(
    broker: &BrokerArgs,
    warehouse: &WarehouseArgs,
) -> Result<PipelineStatus, StatusError> {
    let topology = broker.topology()?;
    let connection = broker::connect(&broker.amqp_url, "canotify-status").await?;
    let queues = queue_statuses(&connection, &topology).await;
    // Closed whatever the answer; a failed close changes nothing for a
    // connection that only read.
    broker::close_connection(&connection, "status read").await;
    let queues = queues?;

    let db = PostgresWarehouse::connect(&warehouse.database_url, &warehouse.schema).await?;
    let counts = db.outcome_counts().await?;

    Ok(PipelineStatus {
        queues,
        schema: warehouse.schema.clone(),
        outcomes: Outcomes::from(counts),
    })
}

async fn queue_statuses(
    connection: &Connection,
    topology: &Topology,
) -> Result<Vec<QueueStatus>, StatusError> {
    let mut queues = Vec::new();
    for queue in topology.queues() {
        queues.push(queue_status(connection, &queue).await?);
    }
    Ok(queues)
}

async fn queue_status(connection: &Connection, queue: &str) -> Result<QueueStatus, StatusError> {
    // A channel per queue: a passive declare of a missing queue closes the
    // channel it was sent on.
    let channel = connection.create_channel().await?;
    let declared = broker::inspect_queue(&channel, queue).await;

    match declared {
        Ok(declared) => {
            broker::close_channel(&channel, "status read").await;
            Ok(QueueStatus {
                queue: queue.to_owned(),
                declared: true,
                messages: Some(declared.message_count()),
                consumers: Some(declared.consumer_count()),
            })
        }
        Err(err) if is_not_found(&err) => Ok(QueueStatus {
            queue: queue.to_owned(),
            declared: false,
            messages: None,
            consumers: None,
        }),
        Err(err) => Err(err.into()),
    }
}

/// Whether the broker answered that the queue does not exist.
pub(crate) fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// `status` as text: a table of queues, then the counts of cases.
pub fn render(status: &PipelineStatus) -> String {
    let width = status
        .queues
        .iter()
        .map(|q| q.queue.len())
        .chain(["QUEUE".len()])
        .max()
        .unwrap_or(0);

    let mut out = format!("{:<width$}  {:>8}  {:>9}", "QUEUE", "READY", "CONSUMERS");
    for queue in &status.queues {
        match (queue.messages, queue.consumers) {
            (Some(messages), Some(consumers)) => {
                let _ = write!(
                    out,
                    "\n{:<width$}  {messages:>8}  {consumers:>9}",
                    queue.queue
                );
            }
            _ => {
                let _ = write!(out, "\n{:<width$}  not declared", queue.queue);
            }
        }
    }

    let _ = write!(out, "\n\ncases in schema {}", status.schema);
    let _ = write!(out, "\n  {:<14} {:>8}", "pending", status.outcomes.pending);
    // The statuses in the order a case moves through them, then any this
    // build does not know.
    let known = Status::ALL.map(Status::as_str);
    let unknown = status
        .outcomes
        .by_status
        .keys()
        .map(String::as_str)
        .filter(|name| !known.contains(name));
    for name in known.into_iter().chain(unknown) {
        let n = status.outcomes.by_status.get(name).copied().unwrap_or(0);
        let _ = write!(out, "\n  {name:<14} {n:>8}");
    }
    out
}
