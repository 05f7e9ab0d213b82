//! `canotify-worker`: checks phones and issues verification codes. All the
//! work is in the library; this parses configuration, sets up logging and
//! runs it until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;

use canotify_common::{Shutdown, telemetry};
use canotify_worker::WorkerConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    if let Err(err) = telemetry::init(&config.log) {
        eprintln!("canotify-worker: {err}");
        return ExitCode::FAILURE;
    }

    match canotify_worker::run(config, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = anyhow::Error::from(err);
            tracing::error!(error = format!("{err:#}"), "worker stopped on an error");
            ExitCode::FAILURE
        }
    }
}
