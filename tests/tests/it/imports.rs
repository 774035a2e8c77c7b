//! CSV imports end to end: intake, the imports worker, every kind of bad file, and a
//! worker killed with SIGKILL in the middle of an import.

use reqwest::StatusCode;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;
use voketag_domain::Role;
use voketag_tests::{As, TestApp, spawn_app, spawn_app_with, voketag_binary};

async fn setup(app: &TestApp) -> (As, Uuid) {
    let factory = app.factory("Acme").await;
    let user = app.token(factory, Role::FactoryUser);
    let product = app.product(&user, "09506000134352").await;
    let batch = app.batch(&user, product, "L-1").await;
    (user, batch)
}

fn csv_of(ids: &[Uuid]) -> Vec<u8> {
    let mut s = String::from("tag_id\n");
    for id in ids {
        s.push_str(&id.to_string());
        s.push('\n');
    }
    s.into_bytes()
}

/// A file of `ids` with serials `{prefix}{row index}`, lines ending in `eol`.
fn csv_with_serials(ids: &[Uuid], prefix: &str, eol: &str) -> Vec<u8> {
    let mut s = format!("tag_id,serial{eol}");
    for (i, id) in ids.iter().enumerate() {
        s.push_str(&format!("{id},{prefix}{i}{eol}"));
    }
    s.into_bytes()
}

async fn import_status(app: &TestApp, who: &As, id: Uuid) -> Value {
    let (status, body) = app.get(&format!("/v1/imports/{id}"), who).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.pool())
        .await
        .expect("count query")
}

/// Uploads, runs the worker, and returns the import as the API shows it.
/// No tag of a rejected file reached the registry or an event: nothing half-applied.
async fn assert_nothing_issued(app: &TestApp) {
    assert_eq!(count(app, "SELECT count(*) FROM tag_registry").await, 0);
    assert_eq!(
        count(
            app,
            "SELECT count(*) FROM events WHERE event_type = 'TagsIssued'"
        )
        .await,
        0
    );
}

/// What a worker killed after reserving an import's tags (and before its events committed)
/// leaves behind: the tags in the registry under the import, the import marked as holding
/// them, nothing else (ADR 0012).
async fn leave_reserved(app: &TestApp, import: Uuid, ids: &[Uuid]) {
    leave_in_registry(app, import, ids, "tags_reserved").await;
}

/// Whether the registry's lower partition takes this id (migration `..._15`).
fn in_lower_half(id: &Uuid) -> bool {
    id.as_bytes()[0] < 0x80
}

/// A random id whose first byte is `b`: in the lower half of the registry below `0x80`.
fn id_starting_with(b: u8) -> Uuid {
    let mut bytes = *Uuid::new_v4().as_bytes();
    bytes[0] = b;
    Uuid::from_bytes(bytes)
}

/// Polls `sql` (a boolean) until it answers true.
async fn until(app: &TestApp, what: &str, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sqlx::query_scalar::<_, bool>(sql)
        .fetch_one(app.pool())
        .await
        .expect(what)
    {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ids` in the registry under the import, and the import claimed once, with `mark` set:
/// `tags_reserved` (the whole reservation) or `reserving` (a half, ADR 0014).
async fn leave_in_registry(app: &TestApp, import: Uuid, ids: &[Uuid], mark: &str) {
    sqlx::query(
        "INSERT INTO tag_registry (tag_id, import_id) SELECT t, $2 FROM UNNEST($1::uuid[]) t",
    )
    .bind(ids)
    .bind(import)
    .execute(app.pool())
    .await
    .expect("reserve");
    sqlx::query(&format!(
        "UPDATE imports SET {mark} = true, status = 'validating', attempts = 1 WHERE import_id = $1"
    ))
    .bind(import)
    .execute(app.pool())
    .await
    .expect("mark reserved");
}

/// The registry holds only tags reserved under the import, nothing that counts as issued:
/// all of `ids` when the import is marked as holding them, one half or both while it is
/// marked `reserving` (ADR 0014), none otherwise.
async fn assert_reserved_or_nothing(app: &TestApp, import: Uuid, ids: &[Uuid]) {
    let n = ids.len() as i64;
    let low = ids.iter().filter(|id| in_lower_half(id)).count() as i64;
    let (all, reserved): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE import_id = $1) FROM tag_registry")
            .bind(import)
            .fetch_one(app.pool())
            .await
            .expect("registry");
    let (held, reserving) = marks(app, import).await;
    let allowed: &[i64] = match (held, reserving) {
        (true, false) => &[n],
        (false, true) => &[low, n - low, n],
        (false, false) => &[0],
        (true, true) => &[],
    };
    assert!(
        all == reserved && allowed.contains(&all),
        "{all} registry rows, {reserved} of them reserved by the import, of {n} tags \
         ({low} in the lower half); marked held: {held}, reserving: {reserving}"
    );
}

async fn recall(app: &TestApp, who: &As, batch: Uuid) {
    let (status, body) = app
        .post(
            &format!("/v1/batches/{batch}/recall"),
            who,
            serde_json::json!({"reason": "contamination"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The import's marks: (`tags_reserved`, `reserving`).
async fn marks(app: &TestApp, import: Uuid) -> (bool, bool) {
    sqlx::query_as("SELECT tags_reserved, reserving FROM imports WHERE import_id = $1")
        .bind(import)
        .fetch_one(app.pool())
        .await
        .expect("marks")
}

/// After the worker ran: the import completed with its `n` tags, all in the registry under
/// it, each in exactly one event.
async fn assert_completed_once(app: &TestApp, who: &As, import: Uuid, n: u64) {
    let done = import_status(app, who, import).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["tags_issued"], n);
    let registered = count(
        app,
        &format!("SELECT count(*) FROM tag_registry WHERE import_id = '{import}'"),
    )
    .await;
    let (issued, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT t.tag_id) FROM events, issued_tags(payload) t
          WHERE event_type = 'TagsIssued'",
    )
    .fetch_one(app.pool())
    .await
    .expect("issued tags");
    let n = n as i64;
    assert_eq!(
        (registered, issued, distinct),
        (n, n, n),
        "each tag issued once"
    );
}

async fn upload_ok(app: &TestApp, who: &As, batch: Uuid, body: Vec<u8>) -> Uuid {
    let (status, accepted) = app.upload(who, batch, "text/csv", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    voketag_tests::id_of(&accepted)
}

#[tokio::test]
async fn a_reservation_left_by_a_dead_worker_is_reused_and_each_tag_issued_once() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let ids: Vec<Uuid> = (0..12_345).map(|_| Uuid::new_v4()).collect();
    let import = upload_ok(&app, &user, batch, csv_of(&ids)).await;
    leave_reserved(&app, import, &ids).await;

    // Reserved is not issued: the tag cannot be revoked yet.
    let revoke = format!("/v1/tags/{}/revoke", ids[7]);
    let reason = serde_json::json!({"reason": "stolen"});
    let (status, body) = app.post(&revoke, &user, reason.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    app.drain_imports().await;
    assert_completed_once(&app, &user, import, 12_345).await;
    let (status, body) = app.post(&revoke, &user, reason).await;
    assert_eq!(status, StatusCode::OK, "issued now, so revocable: {body}");
}

#[tokio::test]
async fn the_intake_stores_a_files_rows_packed_and_what_its_read_found() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let ids: Vec<Uuid> = (0..25_001).map(|_| Uuid::new_v4()).collect();
    let id = upload_ok(&app, &user, batch, csv_with_serials(&ids, "SN-", "\n")).await;
    type Stored = (i64, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);
    let pieces: Vec<Stored> = sqlx::query_as(
        "SELECT first_line, ids, serials, lines FROM import_rows WHERE import_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(app.pool())
    .await
    .expect("stored rows");
    let firsts: Vec<i64> = pieces.iter().map(|p| p.0).collect();
    assert_eq!(firsts, [2, 10_002, 20_002], "ten thousand rows a piece");
    assert!(pieces.iter().all(|p| p.3.is_none()), "consecutive lines");
    let stored: Vec<Uuid> = pieces
        .iter()
        .flat_map(|p| p.1.chunks_exact(16))
        .map(|b| Uuid::from_slice(b).expect("an id"))
        .collect();
    assert_eq!(stored, ids, "in file order");
    let serials = String::from_utf8(pieces[2].2.clone().expect("serials")).expect("utf-8");
    assert_eq!(serials.lines().next(), Some("SN-20000"));
    let read: (Option<i64>, i64) =
        sqlx::query_as("SELECT read_rows, read_error_count FROM imports WHERE import_id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .expect("read");
    assert_eq!(read, (Some(25_001), 0));
    assert_eq!(count(&app, "SELECT count(*) FROM import_chunks").await, 0);
    app.drain_imports().await;
    assert_completed_once(&app, &user, id, 25_001).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM import_rows").await,
        0,
        "gone once processed"
    );

    // A bad file: the read's problems are kept for the worker, which rejects it.
    let (status, accepted) = app
        .upload(&user, batch, "text/csv", b"tag_id\nnot-a-uuid\n".to_vec())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    let bad = voketag_tests::id_of(&accepted);
    let read: (Option<i64>, i64) =
        sqlx::query_as("SELECT read_rows, read_error_count FROM imports WHERE import_id = $1")
            .bind(bad)
            .fetch_one(app.pool())
            .await
            .expect("read");
    assert_eq!(read, (Some(1), 1));
    app.drain_imports().await;
    let done = import_status(&app, &user, bad).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(done["errors"][0]["line"], 2, "{done}");
}

/// An import whose stored rows cannot be read back (changed by hand or by a bug) cannot
/// succeed on a later attempt: it is rejected, with what its attempt reserved taken out, and
/// the imports behind it go on.
#[tokio::test]
async fn an_import_whose_stored_rows_are_damaged_is_rejected_and_the_rest_go_on() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let first: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    let second: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    let damaged = upload_ok(&app, &user, batch, csv_with_serials(&first, "A", "\n")).await;
    let behind = upload_ok(&app, &user, batch, csv_with_serials(&second, "B", "\n")).await;
    sqlx::query(
        "UPDATE import_rows SET serials = 'one serial for 300 rows\n'::bytea WHERE import_id = $1",
    )
    .bind(damaged)
    .execute(app.pool())
    .await
    .expect("damage");
    app.drain_imports().await;
    let rejected = import_status(&app, &user, damaged).await;
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    assert_eq!(
        rejected["errors"][0]["code"], "upload_damaged",
        "{rejected}"
    );
    assert_eq!(rejected["rows_read"], 300);
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM tag_registry WHERE import_id = '{damaged}'")
        )
        .await,
        0,
        "its reservation is taken out"
    );
    assert_eq!(marks(&app, damaged).await, (false, false));
    assert_completed_once(&app, &user, behind, 200).await;
}

/// An upload accepted before the intake packed uploads (ADR 0015) is stored as CSV text in
/// `import_chunks`: the worker packs it first, in a transaction that drops the text, and
/// then issues it like any other.
#[tokio::test]
async fn an_upload_stored_as_text_is_packed_by_the_worker_and_issued() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let ids: Vec<Uuid> = (0..12_345).map(|_| Uuid::new_v4()).collect();
    let text = csv_with_serials(&ids, "S", "\r\n");
    let (_, b) = app.get(&format!("/v1/batches/{batch}"), &user).await;
    let factory: Uuid = b["factory_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("factory_id");
    let import = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO imports (import_id, factory_id, batch_id, content_bytes, actor, request_id, correlation_id, traceparent)
         VALUES ($1, $2, $3, $4, 'user:legacy', 'req-legacy', 'corr-legacy', '')",
    )
    .bind(import)
    .bind(factory)
    .bind(batch)
    .bind(text.len() as i64)
    .execute(app.pool())
    .await
    .expect("an import of before");
    // Split inside a row, as the old intake did at every MiB.
    for (seq, piece) in text.chunks(100_003).enumerate() {
        sqlx::query("INSERT INTO import_chunks (import_id, seq, data) VALUES ($1, $2, $3)")
            .bind(import)
            .bind(seq as i32)
            .bind(piece)
            .execute(app.pool())
            .await
            .expect("a chunk");
    }
    app.drain_imports().await;
    assert_completed_once(&app, &user, import, 12_345).await;
    let serials: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT t.serial FROM events, issued_tags(payload) t
          WHERE event_type = 'TagsIssued' ORDER BY global_position, t.ordinal",
    )
    .fetch_all(app.pool())
    .await
    .expect("serials");
    assert_eq!(serials.len(), 12_345);
    assert_eq!(serials[12_344].as_deref(), Some("S12344"));
    assert_eq!(count(&app, "SELECT count(*) FROM import_chunks").await, 0);
}

/// A worker killed between the two halves of a reservation (ADR 0014) leaves one half in
/// the registry and the import marked `reserving`: the next attempt takes it out, reserves
/// the whole file again, and issues each tag once.
#[tokio::test]
async fn half_a_reservation_left_by_a_dead_worker_is_taken_out_and_each_tag_issued_once() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let ids: Vec<Uuid> = (0..5_000).map(|_| Uuid::new_v4()).collect();
    let import = upload_ok(&app, &user, batch, csv_of(&ids)).await;
    let low: Vec<Uuid> = ids.iter().copied().filter(in_lower_half).collect();
    leave_in_registry(&app, import, &low, "reserving").await;
    assert_reserved_or_nothing(&app, import, &ids).await;

    app.drain_imports().await;
    assert_completed_once(&app, &user, import, 5_000).await;
    assert_eq!(marks(&app, import).await, (true, false));
}

#[tokio::test]
async fn a_reservation_is_released_with_the_rejection_when_the_batch_refuses() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let ids: Vec<Uuid> = (0..15_000).map(|_| Uuid::new_v4()).collect();
    let id = upload_ok(&app, &user, batch, csv_of(&ids)).await;
    leave_reserved(&app, id, &ids).await;
    recall(&app, &user, batch).await;

    app.drain_imports().await;
    let done = import_status(&app, &user, id).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(done["errors"][0]["code"], "batch.issue_into_finished_batch");
    assert_nothing_issued(&app).await;
    assert_reserved_or_nothing(&app, id, &ids).await;

    // The tags are free again: another batch takes them.
    let product = app.product(&user, "09506000134369").await;
    let other = app.batch(&user, product, "L-2").await;
    let again = import(&app, &user, other, csv_of(&ids)).await;
    assert_eq!(again["status"], "completed", "{again}");
}

#[tokio::test]
async fn an_import_waits_for_tags_another_unfinished_import_reserved() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let product = app.product(&user, "09506000134369").await;
    let other = app.batch(&user, product, "L-2").await;
    let first_ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let first = upload_ok(&app, &user, batch, csv_of(&first_ids)).await;
    leave_reserved(&app, first, &first_ids).await;
    // Another worker is still at the first import: it holds the import's lock.
    let mut holder = app.pool().acquire().await.expect("a connection");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('import:' || $1::text, 0))")
        .bind(first)
        .execute(&mut *holder)
        .await
        .expect("lock");

    let second = upload_ok(&app, &user, other, csv_of(&[Uuid::new_v4(), first_ids[1]])).await;
    let worker = voketag_workers::imports::ImportWorker::new(app.pool().clone());
    let outcome = worker.process(second).await;
    assert!(
        matches!(outcome, Err(voketag_workers::imports::ImportError::Reserved(id)) if id == first),
        "{outcome:?}"
    );
    // Postponed, not rejected; and the pass goes on with whatever else there is.
    assert_eq!(worker.drain().await.expect("drain"), 0);
    let waiting = import_status(&app, &user, second).await;
    assert_eq!(waiting["status"], "validating", "{waiting}");
    assert_eq!(waiting["error_count"], 0);

    // The first import ends rejected, its reservation released: the second goes through.
    recall(&app, &user, batch).await;
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('import:' || $1::text, 0))")
        .bind(first)
        .execute(&mut *holder)
        .await
        .expect("unlock");
    drop(holder);
    assert_eq!(worker.drain().await.expect("drain"), 2);
    let first_done = import_status(&app, &user, first).await;
    assert_eq!(first_done["status"], "rejected", "{first_done}");
    let second_done = import_status(&app, &user, second).await;
    assert_eq!(second_done["status"], "completed", "{second_done}");
    assert_eq!(count(&app, "SELECT count(*) FROM tag_registry").await, 2);
}

async fn import(app: &TestApp, who: &As, batch: Uuid, body: Vec<u8>) -> Value {
    let (status, accepted) = app.upload(who, batch, "text/csv", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    app.drain_imports().await;
    import_status(app, who, voketag_tests::id_of(&accepted)).await
}

#[tokio::test]
async fn a_clean_file_issues_every_tag_in_chunks_of_ten_thousand() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let ids: Vec<Uuid> = (0..25_001).map(|_| Uuid::new_v4()).collect();
    // A BOM, CRLF line ends and a serial column are all accepted.
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend(csv_with_serials(&ids, "SN-", "\r\n"));
    let done = import(&app, &user, batch, body).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["rows_read"], 25_001);
    assert_eq!(done["tags_issued"], 25_001);
    assert_eq!(done["error_count"], 0);

    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM issued_tags(payload)) FROM events
          WHERE event_type = 'TagsIssued' ORDER BY sequence",
    )
    .fetch_all(app.pool())
    .await
    .expect("events");
    assert_eq!(sizes, [10_000, 10_000, 5_001]);
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT t.tag_id::text FROM events, issued_tags(payload) t
          WHERE event_type = 'TagsIssued' ORDER BY global_position, t.ordinal",
    )
    .fetch_all(app.pool())
    .await
    .expect("tag ids");
    let expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    assert_eq!(stored, expected, "every tag, once, in file order");
    assert_eq!(
        count(&app, "SELECT count(*) FROM tag_registry").await,
        25_001
    );
    let (_, b) = app.get(&format!("/v1/batches/{batch}"), &user).await;
    assert_eq!(b["tag_count"], 25_001);
    // The upload is gone once processed; the events are the record.
    assert_eq!(count(&app, "SELECT count(*) FROM import_rows").await, 0);
}

struct Bad {
    name: &'static str,
    body: Vec<u8>,
    code: &'static str,
    line: u64,
}

fn bad_files() -> Vec<Bad> {
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    vec![
        Bad {
            name: "malformed uuid",
            body: format!("tag_id\n{a}\nnot-a-uuid\n").into_bytes(),
            code: "invalid_uuid",
            line: 3,
        },
        Bad {
            name: "no header",
            body: format!("{a}\n{b}\n").into_bytes(),
            code: "missing_header",
            line: 1,
        },
        Bad {
            name: "no tag_id column",
            body: format!("serial\n{a}\n").into_bytes(),
            code: "missing_tag_id_column",
            line: 1,
        },
        Bad {
            name: "wrong column count",
            body: format!("tag_id,serial\n{a},S1\n{b},S2,extra\n").into_bytes(),
            code: "wrong_column_count",
            line: 3,
        },
        Bad {
            name: "duplicate inside the file",
            body: format!("tag_id\n{a}\n{b}\n{a}\n").into_bytes(),
            code: "duplicate_tag",
            line: 4,
        },
        Bad {
            name: "non-UTF-8 bytes",
            body: [
                format!("tag_id,serial\n{a},ok\n{b},").into_bytes(),
                vec![0xff, 0xfe],
                b"\n".to_vec(),
            ]
            .concat(),
            code: "invalid_utf8",
            line: 3,
        },
        Bad {
            name: "header only",
            body: b"tag_id\n".to_vec(),
            code: "no_rows",
            line: 1,
        },
        Bad {
            name: "blank file",
            body: b"\n\n  \n".to_vec(),
            code: "empty_file",
            line: 1,
        },
    ]
}

#[tokio::test]
async fn each_kind_of_bad_file_is_rejected_whole_with_its_own_error() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    for bad in bad_files() {
        let done = import(&app, &user, batch, bad.body).await;
        assert_eq!(done["status"], "rejected", "{}: {done}", bad.name);
        assert_eq!(done["tags_issued"], 0, "{}", bad.name);
        let first = &done["errors"][0];
        assert_eq!(first["code"], bad.code, "{}: {done}", bad.name);
        assert_eq!(first["line"], bad.line, "{}: {done}", bad.name);
        assert!(
            first["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            bad.name
        );
    }
    // Nothing of any rejected file was issued: no half-applied import.
    assert_nothing_issued(&app).await;
}

#[tokio::test]
async fn one_bad_row_among_many_good_ones_rejects_the_whole_file() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let mut body = String::from("tag_id\n");
    for i in 0..30_000 {
        if i == 29_000 {
            body.push_str("zzz\n");
        } else {
            body.push_str(&format!("{}\n", Uuid::new_v4()));
        }
    }
    let done = import(&app, &user, batch, body.into_bytes()).await;
    assert_eq!(done["status"], "rejected");
    assert_eq!(done["errors"][0]["line"], 29_002);
    assert_nothing_issued(&app).await;
}

/// Repeats are found after the scan (by sorting), not row by row: a repeat ten thousands
/// of rows from its first line, after whole events were written, still rejects the file,
/// and the report lists it in file order among the other bad rows.
#[tokio::test]
async fn repeats_far_apart_are_reported_in_file_order_among_other_errors() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let ids: Vec<Uuid> = (0..25_000).map(|_| Uuid::new_v4()).collect();
    let mut body = String::from("tag_id\n");
    for (i, id) in ids.iter().enumerate() {
        match i {
            // Line 12,002: a malformed row between the two repeats.
            12_000 => body.push_str("not-a-uuid\n"),
            // Line 24,002: the tag of line 3 again.
            24_000 => body.push_str(&format!("{}\n", ids[1])),
            _ => body.push_str(&format!("{id}\n")),
        }
    }
    let done = import(&app, &user, batch, body.into_bytes()).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(done["error_count"], 2, "{done}");
    assert_eq!(done["rows_read"], 25_000);
    let errors = &done["errors"];
    assert_eq!(errors[0]["code"], "invalid_uuid", "{done}");
    assert_eq!(errors[0]["line"], 12_002);
    assert_eq!(errors[1]["code"], "duplicate_tag", "{done}");
    assert_eq!(errors[1]["line"], 24_002);
    let message = errors[1]["message"].as_str().unwrap_or_default();
    assert!(message.contains("already appears on line 3"), "{message}");

    // The same repeat with nothing else wrong: found by the sort alone.
    let mut body = String::from("tag_id\n");
    for (i, id) in ids.iter().enumerate() {
        let id = if i == 24_000 { ids[1] } else { *id };
        body.push_str(&format!("{id}\n"));
    }
    let done = import(&app, &user, batch, body.into_bytes()).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(done["error_count"], 1, "{done}");
    assert_eq!(done["errors"][0]["code"], "duplicate_tag");
    assert_eq!(done["errors"][0]["line"], 24_002);
    assert_nothing_issued(&app).await;
}

#[tokio::test]
async fn tags_issued_before_are_refused_with_their_lines() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    // The reservation's lower half meets the old tag (the key of `tag_registry_0`).
    let old: Vec<Uuid> = [0x20, 0xc0, 0x40].map(id_starting_with).to_vec();
    let first = import(&app, &user, batch, csv_of(&old)).await;
    assert_eq!(first["status"], "completed", "{first}");

    let fresh = id_starting_with(0xd0);
    let second = import(&app, &user, batch, csv_of(&[fresh, old[0]])).await;
    assert_eq!(second["status"], "rejected", "{second}");
    assert_eq!(second["error_count"], 1);
    assert_eq!(second["errors"][0]["code"], "tag_already_issued");
    assert_eq!(second["errors"][0]["line"], 3);
    assert_eq!(
        count(&app, "SELECT count(*) FROM tag_registry").await,
        3,
        "the fresh tag was not issued, nor left reserved"
    );
    assert_eq!(
        marks(&app, voketag_tests::id_of(&second)).await,
        (false, false)
    );
}

/// A worker pass under way on an import of two tags, one for each half of the registry,
/// with the lower half in and the upper half waiting for `holder`, a transaction that has
/// entered the upper tag and not committed (ADR 0014).
struct StoppedHalf {
    import: Uuid,
    high: Uuid,
    holder: sqlx::Transaction<'static, sqlx::Postgres>,
    pass: tokio::task::JoinHandle<Result<usize, voketag_workers::imports::ImportError>>,
}

async fn stop_the_upper_half(app: &TestApp, user: &As, batch: Uuid) -> StoppedHalf {
    let (low, high) = (id_starting_with(0x10), id_starting_with(0xc0));
    let import = upload_ok(app, user, batch, csv_of(&[low, high])).await;
    let mut holder = app.pool().begin().await.expect("holder");
    sqlx::query("INSERT INTO tag_registry (tag_id, batch_id) VALUES ($1, $2)")
        .bind(high)
        .bind(batch)
        .execute(&mut *holder)
        .await
        .expect("hold the upper tag");
    let worker = voketag_workers::imports::ImportWorker::new(app.pool().clone());
    let pass = tokio::spawn(async move { worker.drain().await });
    until(
        app,
        "the lower half went in",
        &format!("SELECT reserving FROM imports WHERE import_id = '{import}'"),
    )
    .await;
    StoppedHalf {
        import,
        high,
        holder,
        pass,
    }
}

/// The two halves of a reservation commit one by one (ADR 0014). When one half meets an
/// issued tag after the other went in, that other half is taken out again: the rejected
/// import leaves nothing in the registry. The order is forced: the upper half waits for a
/// transaction that holds its tag until the lower half has committed.
#[tokio::test]
async fn a_half_that_went_in_is_taken_out_when_the_other_meets_an_issued_tag() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let StoppedHalf {
        import,
        high,
        holder,
        pass,
    } = stop_the_upper_half(&app, &user, batch).await;
    holder.commit().await.expect("the upper tag is issued");
    pass.await.expect("join").expect("the pass");

    let done = import_status(&app, &user, import).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(done["error_count"], 1);
    assert_eq!(done["errors"][0]["code"], "tag_already_issued");
    assert_eq!(done["errors"][0]["line"], 3);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT tag_id FROM tag_registry")
        .fetch_all(app.pool())
        .await
        .expect("registry");
    assert_eq!(left, [high], "the lower half was taken out");
    assert_eq!(marks(&app, import).await, (false, false));
}

/// When the tag that stopped a half is gone again by the time the file is checked against
/// the registry (another import's half, taken back), there is nothing to reject: the import
/// is postponed, holding nothing, and completes on a later pass. The order is forced with
/// a lock on the import's row, which the taking-out waits for.
#[tokio::test]
async fn a_tag_gone_again_after_it_stopped_a_half_postpones_the_import() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let StoppedHalf {
        import,
        high,
        holder,
        pass,
    } = stop_the_upper_half(&app, &user, batch).await;
    let mut row_lock = app.pool().begin().await.expect("row lock");
    sqlx::query("SELECT 1 FROM imports WHERE import_id = $1 FOR UPDATE")
        .bind(import)
        .execute(&mut *row_lock)
        .await
        .expect("lock the import's row");
    holder.commit().await.expect("the upper tag is in");
    until(
        &app,
        "the worker is taking its lower half out",
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'
                           AND query LIKE 'UPDATE imports SET tags_reserved = false%')",
    )
    .await;
    sqlx::query("DELETE FROM tag_registry WHERE tag_id = $1")
        .bind(high)
        .execute(app.pool())
        .await
        .expect("the upper tag is gone again");
    row_lock.commit().await.expect("unlock");
    let finished = pass.await.expect("join").expect("the pass");
    assert_eq!(finished, 0, "postponed, not rejected");

    let waiting = import_status(&app, &user, import).await;
    assert_eq!(waiting["status"], "validating", "{waiting}");
    assert_eq!(count(&app, "SELECT count(*) FROM tag_registry").await, 0);
    assert_eq!(marks(&app, import).await, (false, false));

    app.drain_imports().await;
    assert_completed_once(&app, &user, import, 2).await;
}

#[tokio::test]
async fn errors_are_capped_at_a_thousand_and_all_counted() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let body = format!("tag_id\n{}", "bad\n".repeat(1_500));
    let done = import(&app, &user, batch, body.into_bytes()).await;
    assert_eq!(done["status"], "rejected");
    assert_eq!(done["error_count"], 1_500);
    assert_eq!(done["errors"].as_array().map(Vec::len), Some(1_000));
    assert_eq!(done["rows_read"], 1_500);
}

#[tokio::test]
async fn the_intake_refuses_empty_files_wrong_content_types_and_oversized_files() {
    let app = spawn_app_with(|s| s.import_max_bytes = 1_000).await;
    let (user, batch) = setup(&app).await;

    let (status, body) = app.upload(&user, batch, "text/csv", Vec::new()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "empty_file");

    let (status, body) = app
        .upload(&user, batch, "application/json", csv_of(&[Uuid::new_v4()]))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("text/csv")
    );

    let big = csv_of(&(0..40).map(|_| Uuid::new_v4()).collect::<Vec<_>>());
    let (status, body) = app
        .upload(&user, batch, "text/csv; charset=utf-8", big.clone())
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "file_too_large");

    // Without a Content-Length (chunked), the limit is enforced while streaming.
    let stream = chunked(big);
    let response = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/batches/{batch}/imports"),
            &user,
        )
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("chunked upload");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        count(&app, "SELECT count(*) FROM imports").await,
        0,
        "refused uploads leave nothing behind"
    );
}

/// The body in 100-byte pieces, sent chunked (no Content-Length).
fn chunked(
    data: Vec<u8>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + Sync + 'static {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(100).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(pieces)
}

#[tokio::test]
async fn imports_into_a_recalled_batch_are_refused() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let (status, body) = app
        .upload(&user, batch, "text/csv", csv_of(&[Uuid::new_v4()]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Recalled after upload, before the worker ran: the worker refuses it.
    recall(&app, &user, batch).await;
    app.drain_imports().await;
    let done = import_status(&app, &user, voketag_tests::id_of(&body)).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(done["errors"][0]["code"], "batch.issue_into_finished_batch");
    // And the intake refuses new ones at once.
    let (status, body) = app
        .upload(&user, batch, "text/csv", csv_of(&[Uuid::new_v4()]))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "batch.issue_into_finished_batch");
}

fn start_worker(app: &TestApp) -> Child {
    Command::new(voketag_binary())
        .args(["work", "imports"])
        .env("VOKETAG_DATABASE_URL", &app.db.url)
        .env("VOKETAG_REDIS_URL", &app.settings.redis_url)
        .env("VOKETAG_LOG_FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start `voketag work imports`")
}

async fn wait_for(app: &TestApp, import: Uuid, wanted: &[&str], limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM imports WHERE import_id = $1")
            .bind(import)
            .fetch_one(app.pool())
            .await
            .expect("import status");
        if wanted.contains(&status.as_str()) || started.elapsed() > limit {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_mid_import_resumes_and_issues_each_tag_exactly_once() {
    let app = spawn_app().await;
    let (user, batch) = setup(&app).await;
    let n = 150_000;
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let (status, accepted) = app.upload(&user, batch, "text/csv", csv_of(&ids)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let import = voketag_tests::id_of(&accepted);

    // Kill the worker at several moments while it works, each time checking that what is
    // committed is all or nothing.
    for delay_ms in [0u64, 150, 400] {
        let mut worker = start_worker(&app);
        let seen = wait_for(
            &app,
            import,
            &["validating", "applying", "completed"],
            Duration::from_secs(60),
        )
        .await;
        assert_ne!(
            seen, "completed",
            "the worker finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        worker.kill().expect("SIGKILL the worker");
        let _ = worker.wait();
        let status: String = sqlx::query_scalar("SELECT status FROM imports WHERE import_id = $1")
            .bind(import)
            .fetch_one(app.pool())
            .await
            .expect("status");
        let events = count(
            &app,
            "SELECT count(*) FROM events WHERE event_type = 'TagsIssued'",
        )
        .await;
        if status == "completed" {
            break;
        }
        assert_eq!(
            events, 0,
            "killed after {delay_ms} ms while {status}: no event may be half-applied"
        );
        // The registry holds nothing, or the whole file reserved for this import.
        assert_reserved_or_nothing(&app, import, &ids).await;
    }

    let mut worker = start_worker(&app);
    let status = wait_for(
        &app,
        import,
        &["completed", "rejected"],
        Duration::from_secs(120),
    )
    .await;
    worker.kill().expect("stop the worker");
    let _ = worker.wait();
    assert_eq!(status, "completed");
    assert_eq!(
        count(&app, "SELECT count(*) FROM tag_registry").await,
        n as i64
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM events WHERE event_type = 'TagsIssued'"
        )
        .await,
        15
    );
    let issued: i64 = count(
        &app,
        "SELECT count(DISTINCT t.tag_id) FROM events, issued_tags(payload) t
          WHERE event_type = 'TagsIssued'",
    )
    .await;
    assert_eq!(issued, n as i64, "each tag exactly once");
    let done = import_status(&app, &user, import).await;
    assert_eq!(done["tags_issued"], n);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM imports WHERE import_id = $1")
        .bind(import)
        .fetch_one(app.pool())
        .await
        .expect("attempts");
    assert!(
        attempts >= 2,
        "the import was resumed after a kill (attempts {attempts})"
    );
}

/// `voketag bench import` end to end on a small file, three times: each run in a database
/// of its own, its import checked, and the median of the three ratios at the end.
#[tokio::test]
async fn the_import_benchmark_checks_each_run_and_reports_the_median_ratio() {
    let app = spawn_app().await;
    let mut bench = voketag_tests::voketag_command(&app.settings);
    bench.args(["bench", "import", "--rows", "3000", "--runs", "3"]);
    let out = tokio::task::spawn_blocking(move || bench.output())
        .await
        .expect("join")
        .expect("run `voketag bench import`");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ratios: Vec<f64> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("ratio "))
        .map(|l| {
            let figure = l.split_whitespace().nth(1).expect("a figure");
            figure.trim_end_matches('×').parse().expect("a ratio")
        })
        .collect();
    assert_eq!(ratios.len(), 3, "{stdout}");
    assert_eq!(
        stdout
            .matches("import completed, 3000 tags in tag_registry, 1 TagsIssued events")
            .count(),
        3,
        "{stdout}"
    );
    let median_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("median ratio"))
        .unwrap_or_else(|| panic!("no median in {stdout}"));
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(
        median_line.contains(&format!("{:.2}×", sorted[1])),
        "{median_line} for {sorted:?}"
    );
}
