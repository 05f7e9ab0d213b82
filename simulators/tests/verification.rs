//! The verification simulator over HTTP, as the worker sees it: each test
//! starts its own simulator on a free loopback port and checks one rule of
//! `specs/verification-server.md` through the answers and the SMS ledger.

mod support;

use std::time::Duration;

use canotify_simulators::verification::{self, VerificationConfig, VerificationSimulator};
use jiff::ToSpan;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Answer, client, read, today, uuid};

const KEY: &str = "simulator-admin-key";

async fn simulator(config: VerificationConfig) -> VerificationSimulator {
    verification::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulator binds a loopback port")
}

async fn post(sim: &VerificationSimulator, path: &str, body: &Value) -> Answer {
    post_to(&sim.url(), path, body).await
}

async fn post_to(base: &str, path: &str, body: &Value) -> Answer {
    let response = client()
        .post(format!("{base}{path}"))
        .header("X-API-Key", KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    read(response).await.unwrap()
}

async fn batch(sim: &VerificationSimulator, codes: Vec<Value>) -> Answer {
    post(
        sim,
        "/api/batch-issue",
        &json!({ "codes": codes, "padding": "AAAA" }),
    )
    .await
}

/// A code that passes every check.
fn good_code(phone: &str, n: u32) -> Value {
    json!({
        "testType": "confirmed",
        "testDate": today().to_string(),
        "phone": phone,
        "uuid": uuid(n),
    })
}

fn error_code(item: &Value) -> &str {
    item["errorCode"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_unknown_field_fails_the_request_as_unparsable() {
    let sim = simulator(VerificationConfig::default()).await;
    let mut code = good_code("+19165550100", 1);
    code["caseId"] = json!("42");

    let answer = batch(&sim, vec![code]).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer.json), "unparsable_request");
    assert_eq!(answer.json["error_code"], "unparsable_request");
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn a_value_of_the_wrong_json_type_fails_the_request_as_unparsable() {
    let sim = simulator(VerificationConfig::default()).await;
    let mut code = good_code("+19165550100", 1);
    code["tzOffset"] = json!("-420");

    let answer = post(&sim, "/api/issue", &code).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer.json), "unparsable_request");
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_unparsable() {
    let sim = simulator(VerificationConfig::default()).await;

    let response = client()
        .post(format!("{}/api/issue", sim.url()))
        .header("X-API-Key", KEY)
        .header("Content-Type", "text/plain")
        .body(good_code("+19165550100", 1).to_string())
        .send()
        .await
        .unwrap();
    let answer = read(response).await.unwrap();

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer.json), "unparsable_request");
}

#[tokio::test]
async fn a_body_over_64000_bytes_is_unparsable() {
    let sim = simulator(VerificationConfig::default()).await;
    let padding = "A".repeat(64_000);

    let answer = post(
        &sim,
        "/api/batch-issue",
        &json!({ "codes": [good_code("+19165550100", 1)], "padding": padding }),
    )
    .await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer.json), "unparsable_request");
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn a_get_on_an_api_route_is_method_not_allowed() {
    let sim = simulator(VerificationConfig::default()).await;

    let response = client()
        .get(format!("{}/api/batch-issue", sim.url()))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_wrong_or_missing_api_key_is_unauthorized_and_issues_nothing() {
    let sim = simulator(VerificationConfig::default()).await;
    let url = format!("{}/api/batch-issue", sim.url());
    let body = json!({ "codes": [good_code("+19165550100", 1)] });
    let client = client();

    let wrong = client
        .post(&url)
        .header("X-API-Key", "stats-key")
        .json(&body)
        .send();
    let wrong = read(wrong.await.unwrap()).await.unwrap();
    let missing = read(client.post(&url).json(&body).send().await.unwrap())
        .await
        .unwrap();

    for answer in [wrong, missing] {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json, json!({ "error": "unauthorized" }));
        assert!(answer.headers.get("x-ratelimit-limit").is_none());
    }
    assert!(sim.ledger().is_empty());
    assert_eq!(sim.requests(), 0);
}

#[tokio::test]
async fn a_batch_of_eleven_codes_is_refused_whole_without_an_error_code() {
    let sim = simulator(VerificationConfig::default()).await;
    let codes = (0..11)
        .map(|n| good_code(&format!("+191655501{n:02}"), n))
        .collect();

    let answer = batch(&sim, codes).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.json.get("errorCode").is_none(), "{}", answer.json);
    assert!(answer.json["error"].is_string());
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn a_batch_of_ten_codes_is_issued_whole() {
    let sim = simulator(VerificationConfig::default()).await;
    let codes = (0..10)
        .map(|n| good_code(&format!("+191655501{n:02}"), n))
        .collect();

    let answer = batch(&sim, codes).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["codes"].as_array().unwrap().len(), 10);
    assert_eq!(sim.ledger().len(), 10);
    assert_eq!(sim.requests(), 1);
}

#[tokio::test]
async fn an_empty_batch_or_a_realm_without_bulk_is_refused_without_an_error_code() {
    let open = simulator(VerificationConfig::default()).await;
    let closed = simulator(VerificationConfig {
        allow_bulk: false,
        ..Default::default()
    })
    .await;

    let empty = batch(&open, vec![]).await;
    let no_bulk = batch(&closed, vec![good_code("+19165550100", 1)]).await;

    for answer in [empty, no_bulk] {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.json.get("errorCode").is_none(), "{}", answer.json);
    }
    assert!(closed.ledger().is_empty());
}

#[tokio::test]
async fn a_mixed_batch_keeps_its_order_and_takes_the_status_of_the_first_failure() {
    let sim = simulator(VerificationConfig::default()).await;
    let mut wrong_type = good_code("+19165550102", 2);
    wrong_type["testType"] = json!("antigen");
    let mut bad_phone = good_code("not a phone", 3);
    bad_phone["phone"] = json!("not a phone");
    let mut bad_uuid = good_code("+19165550105", 5);
    bad_uuid["uuid"] = json!("case-5");
    let codes = vec![
        good_code("+19165550101", 1),
        wrong_type,
        bad_phone,
        good_code("+19165550104", 4),
        bad_uuid,
    ];

    let answer = batch(&sim, codes).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let items = answer.json["codes"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["uuid"], uuid(1));
    assert_eq!(items[0]["code"].as_str().unwrap().len(), 8);
    assert_eq!(error_code(&items[1]), "invalid_test_type");
    assert_eq!(error_code(&items[2]), "phone_number_invalid");
    assert_eq!(items[3]["uuid"], uuid(4));
    assert_eq!(error_code(&items[4]), "internal_server_error");
    assert_eq!(error_code(&answer.json), "invalid_test_type");
    assert_eq!(answer.json["error"], "3 failed, 2 issued");
    let sent: Vec<String> = sim.ledger().into_iter().map(|sms| sms.uuid).collect();
    assert_eq!(sent, [uuid(1), uuid(4)]);
}

#[tokio::test]
async fn an_issued_code_carries_expiries_and_padding() {
    let sim = simulator(VerificationConfig::default()).await;
    let before = jiff::Timestamp::now().as_second();

    let answer = post(&sim, "/api/issue", &good_code("+19165550100", 1)).await;

    assert_eq!(answer.status, StatusCode::OK);
    let item = &answer.json;
    assert!(
        item["code"]
            .as_str()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit())
    );
    assert!(item["expiresAtTimestamp"].as_i64().unwrap() > before);
    assert!(item["longExpiresAtTimestamp"].as_i64() > item["expiresAtTimestamp"].as_i64());
    assert!(item["expiresAt"].as_str().unwrap().ends_with(" UTC"));
    assert!(item["longExpiresAt"].as_str().unwrap().ends_with(" UTC"));
    assert!(item["padding"].is_string());
    assert!(item.get("errorCode").is_none());
}

#[tokio::test]
async fn a_reused_uuid_in_a_later_batch_is_uuid_already_exists_and_sends_nothing() {
    let sim = simulator(VerificationConfig::default()).await;
    let first = batch(&sim, vec![good_code("+19165550100", 7)]).await;
    assert_eq!(first.status, StatusCode::OK);

    let again = batch(&sim, vec![good_code("+19165550100", 7)]).await;

    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(error_code(&again.json["codes"][0]), "uuid_already_exists");
    assert_eq!(error_code(&again.json), "uuid_already_exists");
    assert_eq!(sim.ledger().len(), 1);
}

#[tokio::test]
async fn a_reused_uuid_on_single_issue_answers_200_without_a_code() {
    let sim = simulator(VerificationConfig::default()).await;
    post(&sim, "/api/issue", &good_code("+19165550100", 7)).await;

    let again = post(&sim, "/api/issue", &good_code("+19165550100", 7)).await;

    assert_eq!(again.status, StatusCode::OK);
    assert!(again.json.get("code").is_none(), "{}", again.json);
    assert_eq!(sim.ledger().len(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_uuid_send_one_sms() {
    let sim = simulator(VerificationConfig {
        latency: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let body = json!({ "codes": [good_code("+19165550100", 9)] });

    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (base, body) = (sim.url(), body.clone());
        racers.spawn(async move { post_to(&base, "/api/batch-issue", &body).await });
    }
    let answers = racers.join_all().await;

    let winners = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    assert_eq!(winners, 1);
    for loser in answers.iter().filter(|a| a.status != StatusCode::OK) {
        let code = error_code(&loser.json["codes"][0]);
        assert!(
            ["uuid_already_exists", "internal_server_error"].contains(&code),
            "{}",
            loser.json
        );
    }
    assert_eq!(sim.ledger().len(), 1);
}

#[tokio::test]
async fn dates_inside_the_28_day_window_are_accepted_and_outside_are_invalid_date() {
    let sim = simulator(VerificationConfig::default()).await;
    let dated = |n: u32, date: Date| {
        let mut code = good_code(&format!("+191655501{n:02}"), n);
        code["testDate"] = json!(date.to_string());
        code
    };
    let codes = vec![
        dated(1, today()),
        dated(2, today() - 28.days()),
        dated(3, today() - 29.days()),
        dated(4, today() + 1.day()),
    ];

    let answer = batch(&sim, codes).await;

    let items = answer.json["codes"].as_array().unwrap();
    assert!(items[0]["code"].is_string(), "{}", items[0]);
    assert!(items[1]["code"].is_string(), "{}", items[1]);
    assert_eq!(error_code(&items[2]), "invalid_date");
    assert_eq!(error_code(&items[3]), "invalid_date");
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_negative_tz_offset_accepts_one_more_day_in_the_past() {
    let sim = simulator(VerificationConfig::default()).await;
    let mut west = good_code("+19165550101", 1);
    west["symptomDate"] = json!((today() - 29.days()).to_string());
    west["testDate"] = json!("");
    west["tzOffset"] = json!(-420);
    let mut east = west.clone();
    east["uuid"] = json!(uuid(2));
    east["tzOffset"] = json!(60);

    let answer = batch(&sim, vec![west, east]).await;

    let items = answer.json["codes"].as_array().unwrap();
    assert!(items[0]["code"].is_string(), "{}", items[0]);
    assert_eq!(error_code(&items[1]), "invalid_date");
}

#[tokio::test]
async fn a_date_not_written_year_month_day_is_unparsable() {
    let sim = simulator(VerificationConfig::default()).await;
    let mut code = good_code("+19165550100", 1);
    code["testDate"] = json!("06/19/2026");

    let answer = post(&sim, "/api/issue", &code).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer.json), "unparsable_request");
}

#[tokio::test]
async fn a_code_without_any_date_is_missing_date_unless_the_realm_allows_it() {
    let strict = simulator(VerificationConfig::default()).await;
    let lenient = simulator(VerificationConfig {
        require_date: false,
        ..Default::default()
    })
    .await;
    let mut undated = good_code("+19165550100", 1);
    undated["testDate"] = json!("");

    let refused = post(&strict, "/api/issue", &undated).await;
    let issued = post(&lenient, "/api/issue", &undated).await;

    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&refused.json), "missing_date");
    assert!(strict.ledger().is_empty());
    assert_eq!(issued.status, StatusCode::OK);
    assert_eq!(lenient.ledger()[0].test_date, None);
}

#[tokio::test]
async fn test_types_are_checked_case_blind_and_against_the_realm() {
    let sim = simulator(VerificationConfig {
        enabled_test_types: vec!["confirmed".to_owned()],
        ..Default::default()
    })
    .await;
    let with_type = |n: u32, test_type: &str| {
        let mut code = good_code(&format!("+191655501{n:02}"), n);
        code["testType"] = json!(test_type);
        code
    };

    let answer = batch(
        &sim,
        vec![
            with_type(1, "CONFIRMED"),
            with_type(2, "likely"),
            with_type(3, ""),
        ],
    )
    .await;

    let items = answer.json["codes"].as_array().unwrap();
    assert!(items[0]["code"].is_string(), "{}", items[0]);
    assert_eq!(error_code(&items[1]), "unsupported_test_type");
    assert_eq!(error_code(&items[2]), "invalid_test_type");
}

#[tokio::test]
async fn the_phone_is_texted_in_e164_whatever_form_it_was_sent_in() {
    let sim = simulator(VerificationConfig::default()).await;

    post(&sim, "/api/issue", &good_code("(916) 555-0123", 1)).await;

    let ledger = sim.ledger();
    assert_eq!(ledger[0].phone, "+19165550123");
    assert_eq!(ledger[0].test_date, Some(today().to_string()));
    assert_eq!(ledger[0].uuid, uuid(1));
}

#[tokio::test]
async fn only_generate_sms_issues_a_code_without_texting_it() {
    let sim = simulator(VerificationConfig::default()).await;
    let mut code = good_code("+19165550100", 1);
    code["onlyGenerateSMS"] = json!(true);

    let answer = post(&sim, "/api/issue", &code).await;

    assert!(answer.json["code"].is_string(), "{}", answer.json);
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn an_unknown_sms_template_is_sms_failure() {
    let sim = simulator(VerificationConfig::default()).await;
    let mut code = good_code("+19165550100", 1);
    code["smsTemplateLabel"] = json!("spanish");

    let answer = post(&sim, "/api/issue", &code).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer.json), "sms_failure");
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn every_authenticated_answer_carries_the_rate_limit_headers() {
    let sim = simulator(VerificationConfig {
        rate_limit_per_minute: Some(60),
        ..Default::default()
    })
    .await;

    let issued = post(&sim, "/api/issue", &good_code("+19165550100", 1)).await;
    let refused = post(&sim, "/api/issue", &json!({ "unknown": 1 })).await;
    let status = post(&sim, "/api/checkcodestatus", &json!({ "uuid": uuid(1) })).await;

    for (answer, remaining) in [(issued, "59"), (refused, "58"), (status, "57")] {
        assert_eq!(answer.headers["x-ratelimit-limit"], "60");
        assert_eq!(answer.headers["x-ratelimit-remaining"], remaining);
        let reset = answer.headers["x-ratelimit-reset"].to_str().unwrap();
        assert!(reset.ends_with(" UTC"), "{reset}");
    }
}

#[tokio::test]
async fn a_spent_rate_limit_answers_plain_text_429_with_a_parseable_retry_after() {
    let sim = simulator(VerificationConfig {
        rate_limit_per_minute: Some(2),
        ..Default::default()
    })
    .await;
    batch(&sim, vec![good_code("+19165550101", 1)]).await;
    batch(&sim, vec![good_code("+19165550102", 2)]).await;

    let limited = batch(&sim, vec![good_code("+19165550103", 3)]).await;

    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.text, "Too Many Requests");
    assert!(
        limited.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let retry_after = limited.headers["retry-after"].to_str().unwrap();
    assert_eq!(retry_after, limited.headers["x-ratelimit-reset"]);
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    let when = DateTime::strptime("%a, %d %b %Y %H:%M:%S UTC", retry_after).unwrap();
    let when = TimeZone::UTC.to_timestamp(when).unwrap();
    let wait = jiff::Timestamp::now().duration_until(when);
    assert!(
        wait > jiff::SignedDuration::ZERO && wait <= jiff::SignedDuration::from_secs(60),
        "{wait}"
    );
    assert_eq!(sim.ledger().len(), 2);
}

#[tokio::test]
async fn a_spent_daily_quota_answers_quota_exceeded_and_sends_nothing_more() {
    let sim = simulator(VerificationConfig {
        daily_quota: Some(2),
        ..Default::default()
    })
    .await;
    let mut invalid = good_code("+19165550100", 1);
    invalid["testType"] = json!("antigen");
    let codes = vec![
        invalid,
        good_code("+19165550102", 2),
        good_code("+19165550103", 3),
        good_code("+19165550104", 4),
    ];

    let answer = batch(&sim, codes).await;

    // A code refused before the quota step spends none of it.
    let items = answer.json["codes"].as_array().unwrap();
    assert!(items[1]["code"].is_string() && items[2]["code"].is_string());
    assert_eq!(error_code(&items[3]), "quota_exceeded");
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.headers.get("retry-after").is_none());
    assert_eq!(sim.ledger().len(), 2);

    let later = post(&sim, "/api/issue", &good_code("+19165550105", 5)).await;

    assert_eq!(later.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&later.json), "quota_exceeded");
}

#[tokio::test]
async fn a_forced_phone_fault_fails_only_that_item_of_the_batch() {
    let sim = simulator(VerificationConfig::default()).await;
    sim.fail_phone("+19165550102", "sms_queue_full");
    let codes = vec![
        good_code("+19165550101", 1),
        good_code("+19165550102", 2),
        good_code("+19165550103", 3),
    ];

    let answer = batch(&sim, codes).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer.json), "sms_queue_full");
    assert_eq!(answer.json["error"], "1 failed, 2 issued");
    assert_eq!(error_code(&answer.json["codes"][1]), "sms_queue_full");
    let sent: Vec<String> = sim.ledger().into_iter().map(|sms| sms.phone).collect();
    assert_eq!(sent, ["+19165550101", "+19165550103"]);

    // The failed code was not kept, so the same uuid can be retried.
    sim.clear_faults();
    let retry = batch(&sim, vec![good_code("+19165550102", 2)]).await;

    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(sim.ledger().len(), 3);
}

#[tokio::test]
async fn a_forced_fault_answers_with_the_status_of_its_error_code() {
    let sim = simulator(VerificationConfig::default()).await;
    sim.fail_phone("+19165550101", "internal_server_error");
    sim.fail_phone("+19165550102", "quota_exceeded");

    let server_error = batch(&sim, vec![good_code("+19165550101", 1)]).await;
    let quota = batch(&sim, vec![good_code("+19165550102", 2)]).await;
    let single = post(&sim, "/api/issue", &good_code("+19165550101", 3)).await;

    assert_eq!(server_error.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error_code(&server_error.json["codes"][0]),
        "internal_server_error"
    );
    assert_eq!(quota.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(single.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(single.json, json!({ "error": "Internal Server Error" }));
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn an_item_error_rate_of_one_fails_every_item_with_a_500() {
    let sim = simulator(VerificationConfig {
        item_error_rate: 1.0,
        ..Default::default()
    })
    .await;

    let answer = batch(
        &sim,
        vec![good_code("+19165550101", 1), good_code("+19165550102", 2)],
    )
    .await;

    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.json["error"], "2 failed, 0 issued");
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn maintenance_mode_answers_429_maintenance_mode() {
    let sim = simulator(VerificationConfig::default()).await;
    sim.set_maintenance(true);

    let answer = batch(&sim, vec![good_code("+19165550101", 1)]).await;

    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&answer.json["codes"][0]), "maintenance_mode");
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn check_code_status_finds_an_issued_code_and_404s_an_unknown_one() {
    let sim = simulator(VerificationConfig::default()).await;
    let issued = post(&sim, "/api/issue", &good_code("+19165550101", 1)).await;

    let found = post(&sim, "/api/checkcodestatus", &json!({ "uuid": uuid(1) })).await;
    let missing = post(&sim, "/api/checkcodestatus", &json!({ "uuid": uuid(2) })).await;

    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.json["claimed"], false);
    assert_eq!(
        found.json["expiresAtTimestamp"],
        issued.json["expiresAtTimestamp"]
    );
    assert_eq!(
        found.json["longExpiresAtTimestamp"],
        issued.json["longExpiresAtTimestamp"]
    );
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&missing.json), "code_not_found");
    assert_eq!(sim.requests(), 1);
}

#[tokio::test]
async fn the_sim_endpoints_serve_the_ledger_and_the_counts() {
    let sim = simulator(VerificationConfig::default()).await;
    batch(
        &sim,
        vec![good_code("+19165550101", 1), good_code("+19165550102", 2)],
    )
    .await;
    let client = client();

    let ledger: Vec<verification::SmsRecord> = client
        .get(format!("{}/_sim/ledger", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stats: Value = client
        .get(format!("{}/_sim/stats", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(ledger, sim.ledger());
    assert!(
        ledger[0].sent_at.parse::<jiff::Timestamp>().is_ok(),
        "{}",
        ledger[0].sent_at
    );
    assert_eq!(stats, json!({ "requests": 1, "sms_sent": 2 }));
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = simulator(VerificationConfig::default()).await;
    let url = sim.url();

    sim.shutdown().await;

    let refused = client().get(format!("{url}/_sim/stats")).send().await;
    assert!(refused.is_err());
}
