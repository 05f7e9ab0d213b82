//! `canotify-simulators`: runs the Twilio Lookup and verification server
//! simulators side by side for the local demo and the benchmarks, until
//! Ctrl-C or SIGTERM.
//!
//! Everything is configured by flag or environment variable; the defaults
//! match the ones the worker uses against a local stack.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use canotify_simulators::config::SimulatorConfig;
use canotify_simulators::{twilio, verification};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = SimulatorConfig::parse();
    // Colour only for a person at a terminal; log files and docker's log
    // driver get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let latency = Duration::from_millis(config.latency_ms);
    let twilio = twilio::start(
        twilio::TwilioConfig {
            account_sid: config.twilio_account_sid,
            auth_token: config.twilio_auth_token,
            latency,
            error_rate: config.error_rate,
            max_concurrent: None,
            seed: config.seed,
        },
        config.twilio_listen,
    )
    .await
    .with_context(|| format!("binding the Twilio simulator to {}", config.twilio_listen))?;

    // A different seed keeps the two simulators' faults from falling on
    // the same draws.
    let verification = verification::start(
        verification::VerificationConfig {
            api_key: config.verification_api_key,
            latency,
            item_error_rate: config.error_rate,
            rate_limit_per_minute: config.rate_limit_per_minute,
            daily_quota: config.daily_quota,
            seed: config.seed.wrapping_add(1),
            ..Default::default()
        },
        config.verification_listen,
    )
    .await
    .with_context(|| {
        format!(
            "binding the verification simulator to {}",
            config.verification_listen
        )
    })?;

    println!("twilio lookup simulator: {}", twilio.url());
    println!("verification server simulator: {}", verification.url());

    shutdown_signal().await?;
    tracing::info!("shutting down");
    twilio.shutdown().await;
    verification.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `docker stop` sends).
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};

        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("listening for Ctrl-C")?;

    Ok(())
}
