//! `canotify-producer`: claims pending cases and publishes them for the
//! workers. All the work is in the library; this parses configuration, sets
//! up logging and runs it until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;

use canotify_common::{Shutdown, telemetry};
use canotify_producer::ProducerConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = ProducerConfig::parse();
    if let Err(err) = telemetry::init(&config.log) {
        eprintln!("canotify-producer: {err}");
        return ExitCode::FAILURE;
    }

    match canotify_producer::run(config, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = anyhow::Error::from(err);
            tracing::error!(error = format!("{err:#}"), "producer stopped on an error");
            ExitCode::FAILURE
        }
    }
}
