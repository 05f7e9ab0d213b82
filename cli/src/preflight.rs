//! Before the demo starts anything: are RabbitMQ and PostgreSQL there? If
//! not, say which, at what address, and how to start it.

use canotify_common::Secret;
use canotify_common::broker;
use canotify_common::config::redact_url;
use canotify_common::telemetry::Chain;

/// Connects to both and reports every one that cannot be reached.
pub async fn check(amqp_url: &Secret, database_url: &Secret) -> Result<(), String> {
    let mut problems = Vec::new();

    match broker::connect(amqp_url, "canotify-preflight").await {
        Ok(connection) => {
            broker::close_connection(&connection, "preflight").await;
        }
        Err(err) => problems.push(format!(
            "RabbitMQ is not reachable: {}.\n  Start it with `rabbitmq-server -detached`, \
             or `docker compose up -d rabbitmq`, or set CANOTIFY_AMQP_URL.",
            Chain(&err)
        )),
    }

    match tokio_postgres::connect(database_url.expose(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            drop(connection);
        }
        Err(err) => problems.push(format!(
            "PostgreSQL is not reachable at {}: {}.\n  Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
             or `docker compose up -d postgres`, or set CANOTIFY_DATABASE_URL.",
            redact_url(database_url.expose()),
            Chain(&err)
        )),
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_broker_and_database_are_both_named_with_how_to_start_them() {
        let problems = check(
            &Secret::new("amqp://guest:secret@127.0.0.1:1/%2f"),
            &Secret::new("postgres://postgres:secret@127.0.0.1:2/test"),
        )
        .await
        .unwrap_err();

        assert!(problems.contains("RabbitMQ") && problems.contains("127.0.0.1:1"));
        assert!(problems.contains("rabbitmq-server -detached"));
        assert!(problems.contains("PostgreSQL") && problems.contains("127.0.0.1:2"));
        assert!(problems.contains("pg_ctlcluster"));
        assert!(
            !problems.contains("secret"),
            "a password leaked: {problems}"
        );
    }
}
