//! Faults injected into the Twilio Lookup simulator, as the worker will
//! meet them: each test arms one, checks the answers of the lookups that
//! take it and of the ones after, and what was billed.

mod support;

use std::time::{Duration, Instant};

use canotify_simulators::faults::Fault;
use canotify_simulators::twilio::{self, TwilioConfig, TwilioSimulator};
use reqwest::StatusCode;
use serde_json::Value;
use support::{Answer, client, read};

async fn simulator() -> TwilioSimulator {
    twilio::start(TwilioConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulator binds a loopback port")
}

/// A paid lookup of a mobile number with the given password; `Err` when
/// no answer came.
async fn try_lookup_as(
    sim: &TwilioSimulator,
    token: &str,
    timeout: Duration,
) -> Result<Answer, reqwest::Error> {
    let url = format!(
        "{}/v2/PhoneNumbers/%2B19165550123?Fields=line_type_intelligence",
        sim.url()
    );
    let response = client()
        .get(url)
        .basic_auth(TwilioConfig::default().account_sid, Some(token))
        .timeout(timeout)
        .send()
        .await?;
    read(response).await
}

async fn try_lookup(sim: &TwilioSimulator) -> Result<Answer, reqwest::Error> {
    let token = TwilioConfig::default().auth_token;
    try_lookup_as(sim, &token, Duration::from_secs(5)).await
}

async fn lookup(sim: &TwilioSimulator) -> Answer {
    try_lookup(sim).await.expect("the simulator answers")
}

#[tokio::test]
async fn a_server_error_is_a_twilio_500_for_the_given_lookups_then_lookups_work() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError, Some(2));

    let first = lookup(&sim).await;
    let second = lookup(&sim).await;
    let third = lookup(&sim).await;

    for answer in [first, second] {
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.json["code"], 20500);
        assert_eq!(answer.json["status"], 500);
    }
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(third.json["line_type_intelligence"]["type"], "mobile");
    assert_eq!(sim.paid_lookups(), 1);
}

#[tokio::test]
async fn an_html_error_page_is_a_502_in_text_html_and_is_not_billed() {
    let sim = simulator().await;
    sim.inject(Fault::HtmlErrorPage, Some(1));

    let page = lookup(&sim).await;
    let after = lookup(&sim).await;

    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    let content_type = page.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.text.contains("<html>"), "{}", page.text);
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(sim.paid_lookups(), 1);
}

#[tokio::test]
async fn a_body_that_is_not_json_comes_with_a_200_and_is_not_billed() {
    let sim = simulator().await;
    sim.inject(Fault::NotJson, Some(1));

    let answer = lookup(&sim).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&answer.text).is_err());
    assert_eq!(sim.paid_lookups(), 0);
}

#[tokio::test]
async fn a_truncated_answer_is_a_200_whose_json_ends_too_early_and_is_billed() {
    let sim = simulator().await;
    sim.inject(Fault::TruncatedJson, Some(1));

    let cut = lookup(&sim).await;
    let after = lookup(&sim).await;

    assert_eq!(cut.status, StatusCode::OK);
    let error = serde_json::from_str::<Value>(&cut.text).unwrap_err();
    assert!(error.is_eof(), "{error}");
    assert_eq!(after.json["valid"], true);
    assert_eq!(sim.paid_lookups(), 2);
}

#[tokio::test]
async fn too_many_requests_is_a_429_with_code_20429_then_lookups_work() {
    let sim = simulator().await;
    sim.inject(Fault::TooManyRequests, Some(2));

    let answers = [lookup(&sim).await, lookup(&sim).await, lookup(&sim).await];

    for refused in &answers[..2] {
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.json["code"], 20429);
    }
    assert_eq!(answers[2].status, StatusCode::OK);
    assert_eq!(sim.paid_lookups(), 1);
}

#[tokio::test]
async fn the_unauthorized_fault_refuses_even_the_right_credentials() {
    let sim = simulator().await;
    sim.inject(Fault::Unauthorized, Some(1));

    let refused = lookup(&sim).await;
    let after = lookup(&sim).await;

    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json["code"], 20003);
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(sim.paid_lookups(), 1);
}

#[tokio::test]
async fn wrong_credentials_are_refused_before_the_fault_and_do_not_use_it_up() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError, Some(1));

    let wrong = try_lookup_as(&sim, "guess", Duration::from_secs(5)).await;
    let right = lookup(&sim).await;

    assert_eq!(wrong.unwrap().status, StatusCode::UNAUTHORIZED);
    assert_eq!(right.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_delay_holds_the_answer_then_answers_normally() {
    let sim = simulator().await;
    sim.inject(Fault::Delay(Duration::from_millis(300)), Some(1));

    let started = Instant::now();
    let held = lookup(&sim).await;
    let held_for = started.elapsed();
    let started = Instant::now();
    let after = lookup(&sim).await;

    assert_eq!(held.status, StatusCode::OK);
    assert!(held_for >= Duration::from_millis(300), "{held_for:?}");
    assert_eq!(after.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn a_delay_past_the_client_timeout_times_out_a_lookup_that_was_billed() {
    let sim = simulator().await;
    sim.inject(Fault::Delay(Duration::from_secs(30)), Some(1));

    let token = TwilioConfig::default().auth_token;
    let timed_out = try_lookup_as(&sim, &token, Duration::from_millis(200)).await;

    let error = timed_out.err().expect("the lookup times out");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(sim.paid_lookups(), 1);
}

#[tokio::test]
async fn a_dropped_connection_gives_no_answer_then_the_next_lookup_is_answered() {
    let sim = simulator().await;
    sim.inject(Fault::DropConnection, Some(1));

    let dropped = client()
        .get(format!("{}/v2/PhoneNumbers/%2B19165550123", sim.url()))
        .query(&[("Fields", "line_type_intelligence")])
        .basic_auth("ACsimulator", Some("simulator-token"))
        .send()
        .await;
    let after = lookup(&sim).await;

    let error = dropped.expect_err("no answer comes back");
    assert!(!error.is_timeout(), "{error}");
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(sim.paid_lookups(), 2);
}

#[tokio::test]
async fn a_fault_without_a_count_lasts_until_cleared() {
    let sim = simulator().await;
    sim.inject(Fault::NotJson, None);

    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(lookup(&sim).await.text);
    }
    sim.clear_injected();
    let after = lookup(&sim).await;

    assert!(
        bodies
            .iter()
            .all(|b| serde_json::from_str::<Value>(b).is_err())
    );
    assert_eq!(after.json["valid"], true);
    assert_eq!(sim.paid_lookups(), 1);
}

#[tokio::test]
async fn an_injected_fault_replaces_the_random_errors_while_it_lasts() {
    let sim = simulator().await;
    sim.set_error_rate(1.0);
    sim.inject(Fault::TooManyRequests, Some(1));

    let injected = lookup(&sim).await;
    let random = lookup(&sim).await;

    assert_eq!(injected.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(random.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
#[should_panic(expected = "ErrorCodeIn200")]
async fn a_verification_only_fault_cannot_be_injected() {
    let sim = simulator().await;

    sim.inject(Fault::ErrorCodeIn200, Some(1));
}
