//! The PostgreSQL warehouse on the machine's database, each test in a schema
//! of its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use canotify_common::phone::Region;
use canotify_common::warehouse::{ClaimRequest, NewCase, PostgresWarehouse, Reopened, Warehouse};
use canotify_common::{CaseId, CaseResult, Secret, Status};

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn warehouse(name: &str) -> PostgresWarehouse {
    let schema = format!(
        "w_{name}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let warehouse = PostgresWarehouse::connect(
        &Secret::new("postgres://postgres@127.0.0.1:5432/test"),
        &schema,
    )
    .await
    .expect("PostgreSQL must run on 127.0.0.1:5432");
    warehouse.migrate().await.unwrap();
    warehouse
}

fn case(id: &str, phone: &str, test_date: &str) -> NewCase {
    NewCase {
        case_id: id.to_owned(),
        phone: Some(phone.to_owned()),
        test_date: Some(test_date.parse().unwrap()),
        symptom_date: None,
        test_type: Some("confirmed".to_owned()),
    }
}

fn claim_all(claim_age: Duration) -> ClaimRequest {
    ClaimRequest {
        after: None,
        limit: 1000,
        claim_age,
        window_days: 14,
        region: Region::US,
    }
}

fn result(id: &str, status: Status) -> CaseResult {
    CaseResult::new(CaseId::new(id).unwrap(), status, 1)
}

async fn updated_at(warehouse: &PostgresWarehouse, id: &str) -> String {
    let (client, connection) = tokio_postgres::connect(
        "postgres://postgres@127.0.0.1:5432/test",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let sql = format!(
        "SELECT updated_at::text FROM \"{}\".outcomes WHERE case_id = $1",
        warehouse.schema()
    );
    client.query_one(&sql, &[&id]).await.unwrap().get(0)
}

#[tokio::test]
async fn migrating_twice_is_harmless() {
    let warehouse = warehouse("migrate").await;

    warehouse.migrate().await.unwrap();

    assert_eq!(warehouse.outcome_counts().await.unwrap().total(), 0);
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_result_written_twice_changes_nothing_the_second_time() {
    let warehouse = warehouse("twice").await;
    warehouse
        .insert_cases(&[case("a", "9165550101", "2026-12-01")])
        .await
        .unwrap();
    let outcome = result("a", Status::NotTextable).with_reason("line_type_landline");

    warehouse
        .record_outcomes(std::slice::from_ref(&outcome))
        .await
        .unwrap();
    let first = updated_at(&warehouse, "a").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    warehouse.record_outcomes(&[outcome]).await.unwrap();
    let second = updated_at(&warehouse, "a").await;

    assert_eq!(first, second);
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_sent_outcome_is_never_overwritten() {
    let warehouse = warehouse("sticky").await;
    warehouse
        .insert_cases(&[case("a", "9165550101", "2026-12-01")])
        .await
        .unwrap();

    warehouse
        .record_outcomes(&[result("a", Status::Sent).with_uuid("u")])
        .await
        .unwrap();
    warehouse
        .record_outcomes(&[result("a", Status::Failed).with_reason("verification_timeout")])
        .await
        .unwrap();

    let rows = warehouse.outcomes().await.unwrap();
    assert_eq!(rows[0].status, "sent");
    assert_eq!(rows[0].verification_uuid.as_deref(), Some("u"));
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn one_batch_holding_two_results_for_a_case_keeps_the_sent_one() {
    let warehouse = warehouse("twoinone").await;

    warehouse
        .record_outcomes(&[
            result("a", Status::Sent).with_uuid("u"),
            result("a", Status::Failed),
            result("b", Status::Rejected),
        ])
        .await
        .unwrap();

    let rows = warehouse.outcomes().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].status, "sent");
    assert_eq!(rows[1].status, "rejected");
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_claim_is_taken_once_until_it_grows_stale() {
    let warehouse = warehouse("stale").await;
    warehouse
        .insert_cases(&[case("a", "9165550101", "2026-12-01")])
        .await
        .unwrap();

    let first = warehouse
        .claim_page(&claim_all(Duration::from_secs(3600)))
        .await
        .unwrap();
    let again = warehouse
        .claim_page(&claim_all(Duration::from_secs(3600)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stale = warehouse
        .claim_page(&claim_all(Duration::from_millis(10)))
        .await
        .unwrap();

    assert_eq!(first.claimed.len(), 1);
    assert_eq!(again.claimed.len(), 0);
    assert_eq!(stale.claimed.len(), 1);
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_released_claim_is_taken_again_and_a_published_one_is_kept() {
    let warehouse = warehouse("release").await;
    warehouse
        .insert_cases(&[
            case("a", "9165550101", "2026-12-01"),
            case("b", "9165550102", "2026-12-01"),
        ])
        .await
        .unwrap();
    let long = Duration::from_secs(3600);
    warehouse.claim_page(&claim_all(long)).await.unwrap();

    warehouse
        .mark_published(&[CaseId::new("a").unwrap()])
        .await
        .unwrap();
    warehouse
        .release_claims(&[CaseId::new("a").unwrap(), CaseId::new("b").unwrap()])
        .await
        .unwrap();
    let again = warehouse.claim_page(&claim_all(long)).await.unwrap();

    let ids: Vec<&str> = again.claimed.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(ids, vec!["b"]);
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_second_test_waits_for_the_first_then_is_recorded_duplicate() {
    let warehouse = warehouse("dedup").await;
    warehouse
        .insert_cases(&[
            case("a", "(916) 555-0101", "2026-12-01"),
            case("b", "+1 916-555-0101", "2026-12-02"),
        ])
        .await
        .unwrap();
    let long = Duration::from_secs(3600);

    let first = warehouse.claim_page(&claim_all(long)).await.unwrap();
    warehouse
        .record_outcomes(&[result("a", Status::Sent).with_uuid("u")])
        .await
        .unwrap();
    let second = warehouse.claim_page(&claim_all(long)).await.unwrap();

    assert_eq!(first.claimed.len(), 1);
    assert_eq!(first.deferred, 1);
    assert_eq!(second.duplicates, 1);
    let rows = warehouse.outcomes().await.unwrap();
    assert_eq!(rows[1].status, "duplicate");
    assert_eq!(rows[1].duplicate_of.as_deref(), Some("a"));
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_second_test_is_texted_when_the_first_could_not_be() {
    let warehouse = warehouse("retext").await;
    warehouse
        .insert_cases(&[
            case("a", "9165550101", "2026-12-01"),
            case("b", "9165550101", "2026-12-02"),
        ])
        .await
        .unwrap();
    let long = Duration::from_secs(3600);

    warehouse.claim_page(&claim_all(long)).await.unwrap();
    warehouse
        .record_outcomes(&[result("a", Status::Rejected).with_reason("invalid_date")])
        .await
        .unwrap();
    let second = warehouse.claim_page(&claim_all(long)).await.unwrap();

    let ids: Vec<&str> = second.claimed.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(ids, vec!["b"]);
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn rows_with_sql_metacharacters_are_stored_and_read_as_data() {
    let warehouse = warehouse("quotes").await;
    let id = "x'); DROP TABLE cases; --";
    warehouse
        .insert_cases(&[case(id, "916'; --", "2026-12-01")])
        .await
        .unwrap();

    let page = warehouse
        .claim_page(&claim_all(Duration::from_secs(3600)))
        .await
        .unwrap();

    assert_eq!(page.claimed[0].case_id.as_str(), id);
    assert_eq!(page.claimed[0].phone.as_deref(), Some("916'; --"));
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn an_unusable_case_id_is_recorded_rejected_and_paging_goes_on() {
    let warehouse = warehouse("badid").await;
    let long_id = "z".repeat(300);
    warehouse
        .insert_cases(&[
            case(&long_id, "9165550101", "2026-12-01"),
            case("a", "9165550102", "2026-12-01"),
        ])
        .await
        .unwrap();

    let page = warehouse
        .claim_page(&claim_all(Duration::from_secs(3600)))
        .await
        .unwrap();

    assert_eq!(page.refused, 1);
    assert_eq!(page.claimed.len(), 1);
    let rows = warehouse.outcomes().await.unwrap();
    let refused = rows.iter().find(|r| r.case_id == long_id).unwrap();
    assert_eq!(
        (refused.status.as_str(), refused.reason.as_deref()),
        ("rejected", Some("case_id_unusable"))
    );
    warehouse.drop_schema().await.unwrap();
}

fn ids(names: &[&str]) -> Vec<CaseId> {
    names.iter().map(|n| CaseId::new(*n).unwrap()).collect()
}

#[tokio::test]
async fn a_reopened_failed_case_whose_person_was_texted_meanwhile_is_recorded_duplicate() {
    let warehouse = warehouse("reopen_dup").await;
    warehouse
        .insert_cases(&[
            case("a", "(916) 555-0101", "2026-12-01"),
            case("b", "+1 916-555-0101", "2026-12-02"),
        ])
        .await
        .unwrap();
    let long = Duration::from_secs(3600);
    warehouse.claim_page(&claim_all(long)).await.unwrap();
    warehouse
        .record_outcomes(&[result("a", Status::Failed).with_reason("sms_queue_full")])
        .await
        .unwrap();
    warehouse.claim_page(&claim_all(long)).await.unwrap();
    warehouse
        .record_outcomes(&[result("b", Status::Sent).with_uuid("u")])
        .await
        .unwrap();

    let answers = warehouse.reopen(&ids(&["a"]), 14).await.unwrap();

    assert_eq!(
        answers,
        vec![Reopened::Duplicate {
            of: CaseId::new("b").unwrap()
        }]
    );
    let rows = warehouse.outcomes().await.unwrap();
    assert_eq!(rows[0].status, "duplicate");
    assert_eq!(rows[0].duplicate_of.as_deref(), Some("b"));
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_reopened_case_holds_its_person_like_a_claim() {
    let warehouse = warehouse("reopen_claim").await;
    warehouse
        .insert_cases(&[case("a", "9165550101", "2026-12-01")])
        .await
        .unwrap();
    let long = Duration::from_secs(3600);
    warehouse.claim_page(&claim_all(long)).await.unwrap();
    warehouse
        .record_outcomes(&[result("a", Status::Failed).with_reason("sms_queue_full")])
        .await
        .unwrap();

    let answers = warehouse.reopen(&ids(&["a"]), 14).await.unwrap();
    warehouse
        .insert_cases(&[case("b", "19165550101", "2026-12-03")])
        .await
        .unwrap();
    let page = warehouse.claim_page(&claim_all(long)).await.unwrap();

    assert_eq!(answers, vec![Reopened::Claimed]);
    let rows = warehouse.outcomes().await.unwrap();
    assert_eq!(rows[0].status, "queued");
    assert_eq!(rows[0].reason, None);
    assert!(page.claimed.is_empty(), "{:?}", page.claimed);
    assert_eq!(page.deferred, 1);
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_case_is_not_reopened_while_another_of_its_person_is_in_flight() {
    let warehouse = warehouse("reopen_wait").await;
    warehouse
        .insert_cases(&[
            case("a", "9165550101", "2026-12-01"),
            case("b", "9165550101", "2026-12-02"),
        ])
        .await
        .unwrap();
    let long = Duration::from_secs(3600);
    warehouse.claim_page(&claim_all(long)).await.unwrap();
    warehouse
        .record_outcomes(&[result("a", Status::Failed).with_reason("sms_queue_full")])
        .await
        .unwrap();
    let second = warehouse.claim_page(&claim_all(long)).await.unwrap();

    let answers = warehouse.reopen(&ids(&["a"]), 14).await.unwrap();

    assert_eq!(second.claimed.len(), 1);
    assert_eq!(answers, vec![Reopened::Waiting]);
    let rows = warehouse.outcomes().await.unwrap();
    assert_eq!(rows[0].status, "failed");
    assert_eq!(rows[0].reason.as_deref(), Some("sms_queue_full"));
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_final_outcome_or_an_unknown_case_is_not_reopened() {
    let warehouse = warehouse("reopen_final").await;
    warehouse
        .insert_cases(&[case("a", "9165550101", "2026-12-01")])
        .await
        .unwrap();
    warehouse
        .record_outcomes(&[result("a", Status::Sent).with_uuid("u")])
        .await
        .unwrap();

    let answers = warehouse.reopen(&ids(&["a", "nobody"]), 14).await.unwrap();

    assert_eq!(
        answers,
        vec![Reopened::Final(Status::Sent), Reopened::Unknown]
    );
    assert_eq!(warehouse.outcomes().await.unwrap()[0].status, "sent");
    warehouse.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_database_that_never_answers_is_reported_as_unreachable_and_retryable() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = Secret::new(format!("postgres://canotify:hunter2@{address}/test"));

    let err = tokio::time::timeout(
        Duration::from_secs(60),
        PostgresWarehouse::connect(&url, "silent"),
    )
    .await
    .expect("connecting to a silent database never ended")
    .err()
    .expect("a silent database is not a warehouse");

    let message = err.to_string();
    assert!(message.contains(&address.to_string()), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(err.is_retryable());
}
