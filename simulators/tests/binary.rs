//! The `canotify-simulators` binary as the demo and the chaos run start it:
//! configured by environment variable only, on free loopback ports.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// An HTTP client for plain-http URLs. reqwest is built with rustls but no
/// crypto provider, and refuses to build a client until one is installed.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn sim_error_rate_fails_every_lookup_and_every_code_when_set_to_one() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_canotify-simulators"))
        .env("SIM_TWILIO_LISTEN", "127.0.0.1:0")
        .env("SIM_VERIFICATION_LISTEN", "127.0.0.1:0")
        .env("SIM_ERROR_RATE", "1")
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");

    // The binary prints each simulator's URL once it is listening.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut twilio, mut verification) = (None, None);
    while twilio.is_none() || verification.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the binary prints its URLs in time")
            .unwrap()
            .expect("the binary prints both URLs before its output ends");
        if let Some(url) = line.strip_prefix("twilio lookup simulator: ") {
            twilio = Some(url.to_owned());
        } else if let Some(url) = line.strip_prefix("verification server simulator: ") {
            verification = Some(url.to_owned());
        }
    }
    let (twilio, verification) = (twilio.unwrap(), verification.unwrap());
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let client = client();

    let lookup = client
        .get(format!("{twilio}/v2/PhoneNumbers/%2B19165550123"))
        .basic_auth("ACsimulator", Some("simulator-token"))
        .send()
        .await
        .unwrap();
    let batch = client
        .post(format!("{verification}/api/batch-issue"))
        .header("X-API-Key", "simulator-admin-key")
        .json(&json!({ "codes": [{
            "testType": "confirmed",
            "testDate": today,
            "phone": "+19165550123",
        }] }))
        .send()
        .await
        .unwrap();

    assert_eq!(lookup.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(batch.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let batch: Value = batch.json().await.unwrap();
    assert_eq!(batch["codes"][0]["errorCode"], "internal_server_error");
    child.kill().await.unwrap();
}
