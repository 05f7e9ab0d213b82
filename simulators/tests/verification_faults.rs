//! Faults injected into the verification simulator, as the worker will meet
//! them: each test arms one, checks the answers of the calls that take it
//! and of the ones after, and then checks what really happened through the
//! SMS ledger and `/api/checkcodestatus`, which is never faulted.

mod support;

use std::time::{Duration, Instant};

use canotify_simulators::faults::Fault;
use canotify_simulators::verification::{self, VerificationConfig, VerificationSimulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Answer, client, read, today, uuid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "simulator-admin-key";

async fn simulator() -> VerificationSimulator {
    verification::start(
        VerificationConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("the simulator binds a loopback port")
}

/// Sends `body` to `path` with the right key; `Err` when no answer came.
async fn try_post(
    sim: &VerificationSimulator,
    path: &str,
    body: &Value,
) -> Result<Answer, reqwest::Error> {
    let response = client()
        .post(format!("{}{path}", sim.url()))
        .header("X-API-Key", KEY)
        .timeout(Duration::from_secs(5))
        .json(body)
        .send()
        .await?;
    read(response).await
}

async fn post(sim: &VerificationSimulator, path: &str, body: &Value) -> Answer {
    try_post(sim, path, body)
        .await
        .expect("the simulator answers")
}

/// A code that passes every check.
fn good_code(n: u32) -> Value {
    json!({
        "testType": "confirmed",
        "testDate": today().to_string(),
        "phone": format!("+191655501{n:02}"),
        "uuid": uuid(n),
    })
}

/// A batch of good codes numbered `numbers`.
fn batch_of(numbers: impl IntoIterator<Item = u32>) -> Value {
    let codes: Vec<Value> = numbers.into_iter().map(good_code).collect();
    json!({ "codes": codes })
}

/// `/api/checkcodestatus` for case `n`.
async fn code_status(sim: &VerificationSimulator, n: u32) -> StatusCode {
    let body = json!({ "uuid": uuid(n) });
    post(sim, "/api/checkcodestatus", &body).await.status
}

fn texted(sim: &VerificationSimulator) -> Vec<String> {
    sim.ledger().into_iter().map(|sms| sms.uuid).collect()
}

#[tokio::test]
async fn a_server_error_answers_500_for_the_given_calls_then_issues_again() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError, Some(2));

    let first = post(&sim, "/api/batch-issue", &batch_of([1, 2])).await;
    let second = post(&sim, "/api/issue", &good_code(3)).await;
    let third = post(&sim, "/api/batch-issue", &batch_of([4])).await;

    for answer in [&first, &second] {
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.json, json!({ "error": "Internal Server Error" }));
        assert!(answer.headers.contains_key("x-ratelimit-limit"));
    }
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(texted(&sim), [uuid(4)]);
    assert_eq!(sim.requests(), 3);
}

#[tokio::test]
async fn an_html_error_page_is_a_502_in_text_html() {
    let sim = simulator().await;
    sim.inject(Fault::HtmlErrorPage, Some(1));

    let page = post(&sim, "/api/batch-issue", &batch_of([1])).await;
    let after = post(&sim, "/api/batch-issue", &batch_of([2])).await;

    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    let content_type = page.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.text.contains("<html>"), "{}", page.text);
    assert_eq!(after.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_is_not_json_comes_with_a_200() {
    let sim = simulator().await;
    sim.inject(Fault::NotJson, Some(1));

    let answer = post(&sim, "/api/batch-issue", &batch_of([1])).await;
    let after = post(&sim, "/api/batch-issue", &batch_of([2])).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&answer.text).is_err());
    assert!(after.json["codes"][0]["code"].is_string(), "{}", after.text);
}

#[tokio::test]
async fn an_error_code_in_a_200_marks_every_item_and_nothing_else() {
    let sim = simulator().await;
    sim.inject(Fault::ErrorCodeIn200, Some(2));

    let batch = post(&sim, "/api/batch-issue", &batch_of([1, 2, 3])).await;
    let single = post(&sim, "/api/issue", &good_code(4)).await;

    assert_eq!(batch.status, StatusCode::OK);
    let items = batch.json["codes"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for item in items {
        assert_eq!(item["errorCode"], "internal_server_error");
        assert!(item.get("code").is_none(), "{item}");
    }
    assert!(batch.json.get("errorCode").is_none(), "{}", batch.text);
    assert_eq!(single.status, StatusCode::OK);
    assert_eq!(single.json["errorCode"], "internal_server_error");
    assert!(single.json.get("code").is_none(), "{}", single.text);
}

#[tokio::test]
async fn a_truncated_answer_is_a_200_whose_json_ends_too_early() {
    let sim = simulator().await;
    sim.inject(Fault::TruncatedJson, Some(1));

    let cut = post(&sim, "/api/batch-issue", &batch_of([1, 2])).await;
    let after = post(&sim, "/api/batch-issue", &batch_of([3])).await;

    assert_eq!(cut.status, StatusCode::OK);
    assert!(cut.text.starts_with("{\""), "{}", cut.text);
    let error = serde_json::from_str::<Value>(&cut.text).unwrap_err();
    assert!(error.is_eof(), "{error}");
    assert!(after.json["codes"][0]["code"].is_string(), "{}", after.text);
}

#[tokio::test]
async fn a_codes_array_one_short_leaves_out_the_last_item() {
    let sim = simulator().await;
    sim.inject(Fault::WrongLengthCodes, Some(1));

    let short = post(&sim, "/api/batch-issue", &batch_of([1, 2, 3])).await;
    let after = post(&sim, "/api/batch-issue", &batch_of([4, 5])).await;

    assert_eq!(short.status, StatusCode::OK);
    let items = short.json["codes"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["uuid"], uuid(1));
    assert_eq!(items[1]["uuid"], uuid(2));
    assert_eq!(after.json["codes"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_codes_array_one_short_does_not_change_a_single_issue() {
    let sim = simulator().await;
    sim.inject(Fault::WrongLengthCodes, None);

    let answer = post(&sim, "/api/issue", &good_code(1)).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.json["code"].is_string(), "{}", answer.text);
}

#[tokio::test]
async fn issue_then_server_error_answers_500_after_texting() {
    let sim = simulator().await;
    sim.inject(Fault::IssueThenServerError, Some(1));

    let failed = post(&sim, "/api/batch-issue", &batch_of([1, 2])).await;
    let after = post(&sim, "/api/batch-issue", &batch_of([3])).await;

    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.json, json!({ "error": "Internal Server Error" }));
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(texted(&sim), [uuid(1), uuid(2), uuid(3)]);
}

#[tokio::test]
async fn a_delay_holds_the_answer_then_answers_normally() {
    let sim = simulator().await;
    sim.inject(Fault::Delay(Duration::from_millis(300)), Some(1));

    let started = Instant::now();
    let held = post(&sim, "/api/batch-issue", &batch_of([1])).await;
    let held_for = started.elapsed();
    let started = Instant::now();
    let after = post(&sim, "/api/batch-issue", &batch_of([2])).await;

    assert_eq!(held.status, StatusCode::OK);
    assert!(held.json["codes"][0]["code"].is_string(), "{}", held.text);
    assert!(held_for >= Duration::from_millis(300), "{held_for:?}");
    assert_eq!(after.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn a_delay_past_the_client_timeout_times_out_after_the_codes_were_texted() {
    let sim = simulator().await;
    sim.inject(Fault::Delay(Duration::from_secs(30)), Some(1));

    let timed_out = client()
        .post(format!("{}/api/batch-issue", sim.url()))
        .header("X-API-Key", KEY)
        .timeout(Duration::from_millis(200))
        .json(&batch_of([1]))
        .send()
        .await
        .unwrap_err();

    assert!(timed_out.is_timeout(), "{timed_out}");
    assert_eq!(texted(&sim), [uuid(1)]);
    assert_eq!(code_status(&sim, 1).await, StatusCode::OK);
}

#[tokio::test]
async fn a_dropped_connection_sends_not_one_byte_back() {
    let sim = simulator().await;
    sim.inject(Fault::DropConnection, Some(1));
    let body = batch_of([1]).to_string();
    let request = format!(
        "POST /api/batch-issue HTTP/1.1\r\nHost: simulator\r\nConnection: close\r\n\
         X-API-Key: {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let address = sim.url().trim_start_matches("http://").to_owned();

    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the simulator closes the connection");

    // A reset instead of a clean close is no answer either.
    assert!(read.is_err() || answer.is_empty(), "{answer:?}");
    assert_eq!(texted(&sim), [uuid(1)]);
}

#[tokio::test]
async fn a_dropped_connection_fails_the_call_then_the_next_call_is_answered() {
    let sim = simulator().await;
    sim.inject(Fault::DropConnection, Some(1));

    let dropped = client()
        .post(format!("{}/api/batch-issue", sim.url()))
        .header("X-API-Key", KEY)
        .json(&batch_of([1]))
        .send()
        .await;
    let after = post(&sim, "/api/batch-issue", &batch_of([2])).await;

    let error = dropped.expect_err("no answer comes back");
    assert!(!error.is_timeout(), "{error}");
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(texted(&sim), [uuid(1), uuid(2)]);
}

#[tokio::test]
async fn faults_that_strike_after_issuing_leave_the_sms_and_a_code_that_exists() {
    let faults = [
        Fault::TruncatedJson,
        Fault::WrongLengthCodes,
        Fault::IssueThenServerError,
        Fault::Delay(Duration::from_millis(50)),
        Fault::DropConnection,
    ];
    for fault in faults {
        let sim = simulator().await;
        sim.inject(fault.clone(), Some(1));

        let _ = try_post(&sim, "/api/batch-issue", &batch_of([1, 2])).await;

        assert_eq!(texted(&sim), [uuid(1), uuid(2)], "{fault:?}");
        assert_eq!(code_status(&sim, 1).await, StatusCode::OK, "{fault:?}");
        assert_eq!(code_status(&sim, 2).await, StatusCode::OK, "{fault:?}");
    }
}

#[tokio::test]
async fn faults_that_strike_before_issuing_leave_no_sms_and_no_code() {
    let faults = [
        Fault::ServerError,
        Fault::HtmlErrorPage,
        Fault::NotJson,
        Fault::ErrorCodeIn200,
        Fault::Unauthorized,
    ];
    for fault in faults {
        let sim = simulator().await;
        sim.inject(fault.clone(), Some(2));

        post(&sim, "/api/batch-issue", &batch_of([1, 2])).await;
        post(&sim, "/api/issue", &good_code(3)).await;

        assert!(sim.ledger().is_empty(), "{fault:?}");
        for n in 1..=3 {
            let status = code_status(&sim, n).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{fault:?}");
        }
    }
}

#[tokio::test]
async fn a_code_refused_under_a_fault_can_be_issued_with_the_same_uuid_later() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError, Some(1));
    post(&sim, "/api/batch-issue", &batch_of([1])).await;

    let retry = post(&sim, "/api/batch-issue", &batch_of([1])).await;

    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(texted(&sim), [uuid(1)]);
}

#[tokio::test]
async fn the_unauthorized_fault_refuses_even_the_right_key() {
    let sim = simulator().await;
    sim.inject(Fault::Unauthorized, Some(1));

    let refused = post(&sim, "/api/batch-issue", &batch_of([1])).await;
    let after = post(&sim, "/api/batch-issue", &batch_of([2])).await;

    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json, json!({ "error": "unauthorized" }));
    assert_eq!(after.status, StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_key_is_refused_before_the_fault_and_does_not_use_it_up() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError, Some(1));

    let wrong = client()
        .post(format!("{}/api/batch-issue", sim.url()))
        .header("X-API-Key", "stats-key")
        .json(&batch_of([1]))
        .send()
        .await
        .unwrap();
    let right = post(&sim, "/api/batch-issue", &batch_of([1])).await;

    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(right.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_fault_without_a_count_lasts_until_cleared() {
    let sim = simulator().await;
    sim.inject(Fault::HtmlErrorPage, None);

    let mut statuses = Vec::new();
    for n in 1..=4 {
        statuses.push(post(&sim, "/api/batch-issue", &batch_of([n])).await.status);
    }
    sim.clear_injected();
    let after = post(&sim, "/api/batch-issue", &batch_of([5])).await;

    assert_eq!(statuses, [StatusCode::BAD_GATEWAY; 4]);
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(texted(&sim), [uuid(5)]);
}

#[tokio::test]
async fn clear_faults_clears_an_injected_fault_too() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError, None);

    sim.clear_faults();
    let answer = post(&sim, "/api/batch-issue", &batch_of([1])).await;

    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn check_code_status_and_the_sim_routes_are_never_faulted() {
    let sim = simulator().await;
    post(&sim, "/api/batch-issue", &batch_of([1])).await;
    sim.inject(Fault::ServerError, None);

    let issued = code_status(&sim, 1).await;
    let unknown = code_status(&sim, 2).await;
    let stats = client()
        .get(format!("{}/_sim/stats", sim.url()))
        .send()
        .await
        .unwrap();
    let faulted = post(&sim, "/api/batch-issue", &batch_of([3])).await;

    assert_eq!(issued, StatusCode::OK);
    assert_eq!(unknown, StatusCode::NOT_FOUND);
    assert_eq!(stats.status(), StatusCode::OK);
    assert_eq!(faulted.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sim.checkcodestatus_calls(), 2);
    assert_eq!(sim.requests(), 2);
}

#[tokio::test]
async fn concurrent_calls_take_a_counted_fault_exactly_that_many_times() {
    let sim = simulator().await;
    sim.inject(Fault::ServerError, Some(3));

    let mut calls = tokio::task::JoinSet::new();
    let base = sim.url();
    for n in 1..=8 {
        let url = format!("{base}/api/batch-issue");
        calls.spawn(async move {
            let response = client()
                .post(url)
                .header("X-API-Key", KEY)
                .json(&batch_of([n]))
                .send()
                .await
                .unwrap();
            response.status()
        });
    }
    let statuses = calls.join_all().await;

    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    assert_eq!(failed, 3);
    assert_eq!(sim.ledger().len(), 5);
}

#[tokio::test]
#[should_panic(expected = "TooManyRequests")]
async fn a_twilio_only_fault_cannot_be_injected() {
    let sim = simulator().await;

    sim.inject(Fault::TooManyRequests, Some(1));
}
