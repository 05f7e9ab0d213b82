//! Before the demo starts anything: are RabbitMQ and PostgreSQL there? If
//! not, say which, at what address, and how to start it.

use canotify_common::Secret;
use canotify_common::broker;
use canotify_common::config::redact_url;

/// Connects to both and reports every one that cannot be reached.
pub async fn check(amqp_url: &Secret, database_url: &Secret) -> Result<(), String> {
    let mut problems = Vec::new();

    match broker::connect(amqp_url, "canotify-preflight").await {
        Ok(connection) => {
            let _ = connection.close(200, "preflight".into()).await;
        }
        Err(err) => problems.push(format!(
            "RabbitMQ is not reachable at {} ({err}).\n  Start it with `rabbitmq-server -detached`, \
             or `docker compose up -d rabbitmq`, or set CANOTIFY_AMQP_URL.",
            redact_url(amqp_url.expose())
        )),
    }

    match tokio_postgres::connect(database_url.expose(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            drop(connection);
        }
        Err(err) => problems.push(format!(
            "PostgreSQL is not reachable at {} ({err}).\n  Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
             or `docker compose up -d postgres`, or set CANOTIFY_DATABASE_URL.",
            redact_url(database_url.expose())
        )),
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
