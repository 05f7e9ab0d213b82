//! Configuration pieces every process shares, as clap argument groups: each
//! flag can also be set by the environment variable named beside it, which
//! is how docker compose wires the processes together.

use std::time::Duration;

use crate::Secret;
use crate::broker::{BrokerError, QueueType, Topology};

/// Where the broker is and how canotify's queues are named.
#[derive(Clone, Debug, clap::Args)]
pub struct BrokerArgs {
    /// AMQP URL of RabbitMQ (`amqps://` for TLS).
    #[arg(
        long = "amqp-url",
        env = "CANOTIFY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true
    )]
    pub amqp_url: Secret,

    /// Prefix of every queue and exchange name, so deployments can share a broker.
    #[arg(
        long = "queue-prefix",
        env = "CANOTIFY_QUEUE_PREFIX",
        default_value = "canotify"
    )]
    pub queue_prefix: String,

    /// Type of the work queues: quorum (replicated) or classic.
    #[arg(
        long = "queue-type",
        env = "CANOTIFY_QUEUE_TYPE",
        value_enum,
        default_value = "quorum"
    )]
    pub queue_type: QueueType,

    /// Waits before each retry of a case, comma-separated; a case gets one
    /// attempt more than there are delays, then it is recorded `failed`.
    #[arg(
        long = "retry-delays",
        env = "CANOTIFY_RETRY_DELAYS",
        default_value = "10s,1m,10m,1h",
        value_delimiter = ',',
        value_parser = parse_duration
    )]
    pub retry_delays: Vec<Duration>,
}

impl BrokerArgs {
    /// The topology these arguments name.
    pub fn topology(&self) -> Result<Topology, BrokerError> {
        Ok(Topology::new(&self.queue_prefix, self.queue_type)?
            .with_retry_delays(&self.retry_delays))
    }
}

/// Where the warehouse is.
#[derive(Clone, Debug, clap::Args)]
pub struct WarehouseArgs {
    /// PostgreSQL connection URL of the warehouse.
    #[arg(
        long = "database-url",
        env = "CANOTIFY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_default_value = true
    )]
    pub database_url: Secret,

    /// Schema holding the case table and canotify's outcome table.
    #[arg(long = "schema", env = "CANOTIFY_SCHEMA", default_value = "canotify")]
    pub schema: String,
}

/// Reads a duration written as `500ms`, `30s`, `10m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|err| format!("{s:?} is not a duration: {err}"))
}

/// Strips the user and password from a URL, for error messages.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => "(unparseable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_removes_credentials() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@rabbit:5672/%2f"),
            "amqp://rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://u:p@db/test?sslmode=require"),
            "postgres://db/test?sslmode=require"
        );
        assert_eq!(redact_url("postgres://db:5432"), "postgres://db:5432");
        assert_eq!(redact_url("nonsense"), "(unparseable URL)");
    }

    #[test]
    fn durations_read_human_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
    }
}
