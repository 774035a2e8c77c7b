//! The factory command API end to end: products, batches and their life cycle, optimistic
//! concurrency, idempotent POSTs, tags, API keys and their rate limit, and the HTTP
//! conventions every route follows (error envelope, request ids, health, metrics, OpenAPI).

use fred::interfaces::KeysInterface;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use uuid::Uuid;
use voketag_domain::Role;
use voketag_tests::{Answer, As, TestApp, id_of, spawn_app, spawn_app_with};

/// A request body.
enum Payload {
    Empty,
    Json(Value),
    /// A content type and the bytes sent with it.
    Raw(&'static str, Vec<u8>),
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    who: &As,
    payload: Payload,
    headers: &[(&str, &str)],
) -> Answer {
    let mut r = app.request(method, path, who);
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r = match payload {
        Payload::Empty => r,
        Payload::Json(v) => r.json(&v),
        Payload::Raw(content_type, bytes) => r.header("content-type", content_type).body(bytes),
    };
    Answer::read(r.send().await.expect("request sent")).await
}

/// Asserts the error envelope: status, code, and a request id equal to the response header.
fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.code(), code, "{}", a.body);
    let error = &a.body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {}",
        a.body
    );
    let request_id = error["request_id"].as_str().unwrap_or("");
    assert!(!request_id.is_empty(), "empty request_id in {}", a.body);
    assert_eq!(
        Some(request_id),
        a.header("x-request-id"),
        "request_id vs x-request-id header"
    );
}

/// A valid GTIN-14 (GS1 mod-10 check digit) for each `n`.
fn gtin(n: u32) -> String {
    let data = format!("0950600{n:06}");
    let sum: u32 = data
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    format!("{data}{}", (10 - sum % 10) % 10)
}

fn product_body(gtin: &str) -> Value {
    json!({"gtin": gtin, "name": "Serum", "brand": "Acme", "intended_markets": ["BR", "US"]})
}

/// An app, factory A with a factory user, and factory B with its own user.
struct Setup {
    app: TestApp,
    a: Uuid,
    user: As,
    foreign: As,
}

async fn setup() -> Setup {
    let app = spawn_app().await;
    let a = app.factory("Acme").await;
    let b = app.factory("Other").await;
    let user = app.token(a, Role::FactoryUser);
    let foreign = app.token(b, Role::FactoryUser);
    Setup {
        app,
        a,
        user,
        foreign,
    }
}

async fn batch_of(app: &TestApp, who: &As, id: Uuid) -> Value {
    let (status, body) = app.get(&format!("/v1/batches/{id}"), who).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn transition(
    app: &TestApp,
    who: &As,
    batch: Uuid,
    action: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let payload = if action == "recall" {
        Payload::Json(json!({"reason": "contamination"}))
    } else {
        Payload::Empty
    };
    call(
        app,
        Method::POST,
        &format!("/v1/batches/{batch}/{action}"),
        who,
        payload,
        headers,
    )
    .await
}

async fn new_api_key(app: &TestApp, who: &As, name: &str) -> (Uuid, String) {
    let (status, body) = app.post("/v1/api-keys", who, json!({"name": name})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        id_of(&body),
        body["api_key"]
            .as_str()
            .expect("api_key in the answer")
            .to_string(),
    )
}

/// Issues `tags` into `batch` through a CSV import and the imports worker.
async fn issue(app: &TestApp, who: &As, batch: Uuid, tags: &[Uuid]) {
    let csv: String = std::iter::once("tag_id".to_string())
        .chain(tags.iter().map(Uuid::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, body) = app
        .upload(who, batch, "text/csv", format!("{csv}\n").into_bytes())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.drain_imports().await;
    let (status, import) = app.get(&format!("/v1/imports/{}", id_of(&body)), who).await;
    assert_eq!(status, StatusCode::OK, "{import}");
    assert_eq!(import["status"], "completed", "{import}");
    assert_eq!(import["tags_issued"], tags.len(), "{import}");
}

// ---------------------------------------------------------------------------------------
// Products

#[tokio::test]
async fn creating_a_product_answers_201_with_a_14_digit_gtin_and_an_etag() {
    let s = setup().await;
    // A GTIN-13 is stored in its 14-digit form.
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body("9506000134352")),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["gtin"], "09506000134352");
    assert_eq!(a.body["factory_id"], s.a.to_string());
    assert_eq!(a.body["name"], "Serum");
    assert_eq!(a.body["brand"], "Acme");
    assert_eq!(a.body["description"], "");
    assert_eq!(a.body["intended_markets"], json!(["BR", "US"]));
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.header("etag"), Some("\"1\""));
    let id = id_of(&a.body);
    let got = call(
        &s.app,
        Method::GET,
        &format!("/v1/products/{id}"),
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body, a.body);
    assert_eq!(got.header("etag"), Some("\"1\""));
}

#[tokio::test]
async fn admins_must_name_the_factory_of_a_product() {
    let s = setup().await;
    let admin = s.app.token(s.a, Role::Admin);
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &admin,
        Payload::Json(product_body(&gtin(1))),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "factory_id_required");
    assert_eq!(a.body["error"]["details"]["field"], "factory_id");
    let mut body = product_body(&gtin(1));
    body["factory_id"] = json!(s.a);
    let (status, created) = s.app.post("/v1/products", &admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["factory_id"], s.a.to_string());
    // A factory that does not exist.
    let mut body = product_body(&gtin(2));
    body["factory_id"] = json!(Uuid::now_v7());
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &admin,
        Payload::Json(body),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_bad_gtin_check_digit_is_422_on_the_gtin_field() {
    let s = setup().await;
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body("09506000134353")),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_gtin");
    assert_eq!(a.body["error"]["details"]["field"], "gtin", "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("check digit"),
        "{}",
        a.body
    );
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body("12345")),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_gtin");
    assert_eq!(a.body["error"]["details"]["field"], "gtin");
    let (_, list) = s.app.get("/v1/products", &s.user).await;
    assert_eq!(list["items"], json!([]), "nothing may be created: {list}");
}

#[tokio::test]
async fn an_unknown_market_is_422_on_intended_markets() {
    let s = setup().await;
    let mut body = product_body(&gtin(1));
    body["intended_markets"] = json!(["BR", "XX"]);
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(body),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_market");
    assert_eq!(a.body["error"]["details"]["field"], "intended_markets");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("XX"),
        "{}",
        a.body
    );
    // No market at all is a domain rule.
    let mut body = product_body(&gtin(1));
    body["intended_markets"] = json!([]);
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(body),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "product.no_markets");
}

#[tokio::test]
async fn a_gtin_is_registered_once_per_factory() {
    let s = setup().await;
    s.app.product(&s.user, &gtin(7)).await;
    // Written as a GTIN-13 the second time: the same GTIN once normalised.
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body(&gtin(7)[1..])),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::CONFLICT, "product.gtin_taken");
    // Another factory may register the same GTIN.
    s.app.product(&s.foreign, &gtin(7)).await;
    let (_, list) = s.app.get("/v1/products", &s.user).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test]
async fn malformed_bodies_are_400_415_and_422_with_the_envelope() {
    let s = setup().await;
    let mut body = product_body(&gtin(1));
    body["colour"] = json!("red");
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(body),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("colour"),
        "{}",
        a.body
    );

    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Raw("application/json", b"{\"gtin\": ".to_vec()),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_json");

    let json_text = serde_json::to_vec(&product_body(&gtin(1))).expect("json");
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Raw("text/plain", json_text),
        &[],
    )
    .await;
    assert_error(
        &a,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    // A missing required field is a schema error too.
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(json!({"gtin": gtin(1)})),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    let (_, list) = s.app.get("/v1/products", &s.user).await;
    assert_eq!(list["items"], json!([]), "{list}");
}

#[tokio::test]
async fn products_are_listed_in_pages_by_cursor() {
    let s = setup().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(s.app.product(&s.user, &gtin(100 + i)).await);
    }
    // Another factory's product never shows up.
    s.app.product(&s.foreign, &gtin(999)).await;

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/products?limit=2".to_string(),
            Some(c) => format!("/v1/products?limit=2&cursor={c}"),
        };
        let (status, page) = s.app.get(&path, &s.user).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(
            !items.is_empty() && items.len() <= 2,
            "page {pages}: {page}"
        );
        for item in items {
            assert_eq!(item["factory_id"], s.a.to_string());
            seen.push(id_of(item));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every product once, oldest first");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 5);

    // The whole list in one page has no cursor.
    let (_, all) = s.app.get("/v1/products?limit=200", &s.user).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(all["next_cursor"], Value::Null);

    for bad in [
        "/v1/products?cursor=not-a-cursor",
        "/v1/products?cursor=AAAA",
    ] {
        let a = call(&s.app, Method::GET, bad, &s.user, Payload::Empty, &[]).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_cursor");
    }
    for bad in ["/v1/products?limit=0", "/v1/products?limit=201"] {
        let a = call(&s.app, Method::GET, bad, &s.user, Payload::Empty, &[]).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_limit");
    }
    let a = call(
        &s.app,
        Method::GET,
        "/v1/products?limit=many",
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_query");
}

#[tokio::test]
async fn another_factorys_product_is_404_and_a_bad_uuid_is_400() {
    let s = setup().await;
    let theirs = s.app.product(&s.foreign, &gtin(1)).await;
    let a = call(
        &s.app,
        Method::GET,
        &format!("/v1/products/{theirs}"),
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    // Exactly what an id that does not exist gets.
    let b = call(
        &s.app,
        Method::GET,
        &format!("/v1/products/{}", Uuid::now_v7()),
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&b, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(a.body["error"]["message"], b.body["error"]["message"]);
    let a = call(
        &s.app,
        Method::GET,
        "/v1/products/not-a-uuid",
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_path");
}

// ---------------------------------------------------------------------------------------
// Batches

#[tokio::test]
async fn a_batch_takes_the_products_markets_unless_it_narrows_them() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let a = call(
        &s.app,
        Method::POST,
        "/v1/batches",
        &s.user,
        Payload::Json(json!({"product_id": product, "lot": "L-1", "production_date": "2026-11-01", "sell_by": "2027-11-01"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["intended_markets"], json!(["BR", "US"]));
    assert_eq!(a.body["status"], "draft");
    assert_eq!(a.body["lot"], "L-1");
    assert_eq!(a.body["product_id"], product.to_string());
    assert_eq!(a.body["factory_id"], s.a.to_string());
    assert_eq!(a.body["production_date"], "2026-11-01");
    assert_eq!(a.body["sell_by"], "2027-11-01");
    assert_eq!(a.body["tag_count"], 0);
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.header("etag"), Some("\"1\""));

    let (status, narrow) = s
        .app
        .post("/v1/batches", &s.user, json!({"product_id": product, "lot": "L-2", "production_date": "2026-11-01", "intended_markets": ["us"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{narrow}");
    assert_eq!(narrow["intended_markets"], json!(["US"]));

    let a = call(
        &s.app,
        Method::POST,
        "/v1/batches",
        &s.user,
        Payload::Json(json!({"product_id": product, "lot": "L-3", "production_date": "2026-11-01", "intended_markets": ["FR"]})),
        &[],
    )
    .await;
    assert_error(
        &a,
        StatusCode::UNPROCESSABLE_ENTITY,
        "batch.market_outside_product",
    );

    let a = call(
        &s.app,
        Method::POST,
        "/v1/batches",
        &s.user,
        Payload::Json(json!({"product_id": product, "lot": "L-4", "production_date": "2026-11-01", "sell_by": "2026-10-31"})),
        &[],
    )
    .await;
    assert_error(
        &a,
        StatusCode::UNPROCESSABLE_ENTITY,
        "batch.sell_by_before_production",
    );

    // The same lot twice for one product.
    let a = call(
        &s.app,
        Method::POST,
        "/v1/batches",
        &s.user,
        Payload::Json(
            json!({"product_id": product, "lot": "L-1", "production_date": "2026-11-01"}),
        ),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::CONFLICT, "batch.lot_taken");

    let a = call(
        &s.app,
        Method::POST,
        "/v1/batches",
        &s.user,
        Payload::Json(
            json!({"product_id": Uuid::now_v7(), "lot": "L-5", "production_date": "2026-11-01"}),
        ),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(a.body["error"]["details"]["field"], "product_id");
}

#[tokio::test]
async fn a_batch_moves_through_its_life_cycle_and_refuses_illegal_moves() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let batch = s.app.batch(&s.user, product, "L-1").await;

    let a = transition(&s.app, &s.user, batch, "close", &[]).await;
    assert_error(&a, StatusCode::CONFLICT, "batch.close_requires_active");

    let a = transition(&s.app, &s.user, batch, "activate", &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["status"], "active");
    assert_eq!(a.body["version"], 2);
    assert_eq!(a.header("etag"), Some("\"2\""));

    let a = transition(&s.app, &s.user, batch, "activate", &[]).await;
    assert_error(&a, StatusCode::CONFLICT, "batch.activate_requires_draft");

    let a = transition(&s.app, &s.user, batch, "recall", &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["status"], "recalled");
    assert_eq!(a.body["recall_reason"], "contamination");
    assert_eq!(a.body["version"], 3);

    let a = transition(&s.app, &s.user, batch, "recall", &[]).await;
    assert_error(&a, StatusCode::CONFLICT, "batch.already_recalled");
    let a = transition(&s.app, &s.user, batch, "close", &[]).await;
    assert_error(&a, StatusCode::CONFLICT, "batch.close_requires_active");

    let (status, body) = s
        .app
        .upload(
            &s.user,
            batch,
            "text/csv",
            format!("tag_id\n{}\n", Uuid::new_v4()).into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["code"], "batch.issue_into_finished_batch",
        "{body}"
    );

    // An empty reason is refused.
    let other = s.app.batch(&s.user, product, "L-2").await;
    let a = call(
        &s.app,
        Method::POST,
        &format!("/v1/batches/{other}/recall"),
        &s.user,
        Payload::Json(json!({"reason": "  "})),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "batch.text_length");

    // Refusals left nothing behind.
    let b = batch_of(&s.app, &s.user, batch).await;
    assert_eq!(b["status"], "recalled");
    assert_eq!(b["version"], 3);
    assert_eq!(b["tag_count"], 0);

    // Activate then close.
    let third = s.app.batch(&s.user, product, "L-3").await;
    assert_eq!(
        transition(&s.app, &s.user, third, "activate", &[])
            .await
            .status,
        StatusCode::OK
    );
    let a = transition(&s.app, &s.user, third, "close", &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["status"], "closed");
    assert_eq!(a.body["version"], 3);
    let a = transition(&s.app, &s.user, third, "close", &[]).await;
    assert_error(&a, StatusCode::CONFLICT, "batch.close_requires_active");

    let a = transition(&s.app, &s.user, Uuid::now_v7(), "activate", &[]).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn if_match_guards_against_lost_updates() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let batch = s.app.batch(&s.user, product, "L-1").await;

    let a = transition(&s.app, &s.user, batch, "activate", &[("if-match", "\"7\"")]).await;
    assert_error(&a, StatusCode::CONFLICT, "version_conflict");
    assert_eq!(
        a.body["error"]["details"]["current_version"], 1,
        "{}",
        a.body
    );
    assert_eq!(batch_of(&s.app, &s.user, batch).await["status"], "draft");

    let a = transition(&s.app, &s.user, batch, "activate", &[("if-match", "\"1\"")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["status"], "active");
    assert_eq!(a.header("etag"), Some("\"2\""));

    // The version the client read is stale now.
    let a = transition(&s.app, &s.user, batch, "recall", &[("if-match", "\"1\"")]).await;
    assert_error(&a, StatusCode::CONFLICT, "version_conflict");
    assert_eq!(
        a.body["error"]["details"]["current_version"], 2,
        "{}",
        a.body
    );
    assert_eq!(batch_of(&s.app, &s.user, batch).await["status"], "active");

    let a = transition(&s.app, &s.user, batch, "recall", &[("if-match", "2")]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["version"], 3);

    let a = transition(
        &s.app,
        &s.user,
        batch,
        "close",
        &[("if-match", "\"three\"")],
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_if_match");
}

// ---------------------------------------------------------------------------------------
// Concurrency

#[tokio::test]
async fn concurrent_commands_on_one_batch_never_lose_an_update() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let actions = [
        "activate", "recall", "close", "activate", "close", "recall", "activate", "close",
        "recall", "close",
    ];
    for round in 0..3 {
        let batch = s.app.batch(&s.user, product, &format!("L-{round}")).await;
        let answers = futures::future::join_all(
            actions
                .iter()
                .map(|action| transition(&s.app, &s.user, batch, action, &[])),
        )
        .await;
        let mut ok_versions = Vec::new();
        for (action, a) in actions.iter().zip(&answers) {
            match a.status {
                StatusCode::OK => ok_versions.push(a.body["version"].as_u64().expect("version")),
                StatusCode::CONFLICT => {
                    let code = a.code();
                    if code == "version_conflict" {
                        let current = a.body["error"]["details"]["current_version"].as_u64();
                        assert!(current.is_some_and(|v| v >= 2), "{action}: {}", a.body);
                    } else {
                        assert!(
                            [
                                "batch.activate_requires_draft",
                                "batch.close_requires_active",
                                "batch.already_recalled"
                            ]
                            .contains(&code),
                            "{action}: unexpected rule {}",
                            a.body
                        );
                    }
                }
                other => panic!("{action}: {other} {}", a.body),
            }
        }
        assert!(
            !ok_versions.is_empty(),
            "round {round}: no command succeeded"
        );
        let final_batch = batch_of(&s.app, &s.user, batch).await;
        let version = final_batch["version"].as_u64().expect("version");
        assert_eq!(
            version,
            1 + ok_versions.len() as u64,
            "round {round}: {final_batch}, 200s at {ok_versions:?}"
        );
        ok_versions.sort_unstable();
        assert_eq!(
            ok_versions,
            (2..=version).collect::<Vec<_>>(),
            "each success got its own version"
        );
        let stored: Vec<i64> = sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_type = 'Batch' AND aggregate_id = $1 ORDER BY sequence")
            .bind(batch.to_string())
            .fetch_all(s.app.pool())
            .await
            .expect("events");
        assert_eq!(stored, (1..=version as i64).collect::<Vec<_>>());
    }
}

// ---------------------------------------------------------------------------------------
// Idempotency

#[tokio::test]
async fn a_retried_product_post_is_answered_from_the_first_time() {
    let s = setup().await;
    let key = [("idempotency-key", "create-serum-1")];
    let first = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body(&gtin(1))),
        &key,
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body(&gtin(1))),
        &key,
    )
    .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body, first.body);
    assert_eq!(id_of(&second.body), id_of(&first.body));
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    let (_, list) = s.app.get("/v1/products", &s.user).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");

    // Another caller's identical key is its own.
    let theirs = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.foreign,
        Payload::Json(product_body(&gtin(1))),
        &key,
    )
    .await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.body);
    assert_ne!(id_of(&theirs.body), id_of(&first.body));
    assert_eq!(theirs.header("idempotent-replayed"), None);
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_422() {
    let s = setup().await;
    let key = [("idempotency-key", "k-1")];
    let first = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body(&gtin(1))),
        &key,
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let other = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body(&gtin(2))),
        &key,
    )
    .await;
    assert_error(
        &other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    let (_, list) = s.app.get("/v1/products", &s.user).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

/// The losers of the race collide on the GTIN's unique row while the winner commits; they
/// must answer with the winner's 201, not 409 `product.gtin_taken`.
#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_create_one_product() {
    let s = setup().await;
    let key = [("idempotency-key", "burst")];
    let answers = futures::future::join_all((0..10).map(|_| {
        call(
            &s.app,
            Method::POST,
            "/v1/products",
            &s.user,
            Payload::Json(product_body(&gtin(1))),
            &key,
        )
    }))
    .await;
    let summary: Vec<String> = answers
        .iter()
        .map(|a| format!("{} {}", a.status, a.body))
        .collect();
    for a in &answers {
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "every retry gets the first answer: {summary:#?}"
        );
    }
    let ids: HashSet<Uuid> = answers.iter().map(|a| id_of(&a.body)).collect();
    assert_eq!(ids.len(), 1, "{summary:#?}");
    let (_, list) = s.app.get("/v1/products", &s.user).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

#[tokio::test]
async fn a_retried_batch_command_is_answered_from_the_first_time() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let batch = s.app.batch(&s.user, product, "L-1").await;
    let key = [("idempotency-key", "activate-l1")];
    let first = transition(&s.app, &s.user, batch, "activate", &key).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let again = transition(&s.app, &s.user, batch, "activate", &key).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "a retry is not refused as a second activation: {}",
        again.body
    );
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(batch_of(&s.app, &s.user, batch).await["version"], 2);
}

/// The losers collide on the events' primary key; they must get the winner's answer,
/// not 409 `version_conflict`.
#[tokio::test]
async fn concurrent_retries_of_a_batch_command_get_the_first_answer() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let batch = s.app.batch(&s.user, product, "L-1").await;
    let key = [("idempotency-key", "activate-burst")];
    let answers = futures::future::join_all(
        (0..10).map(|_| transition(&s.app, &s.user, batch, "activate", &key)),
    )
    .await;
    let summary: Vec<String> = answers
        .iter()
        .map(|a| format!("{} {}", a.status, a.body))
        .collect();
    for a in &answers {
        assert_eq!(
            a.status,
            StatusCode::OK,
            "every retry gets the first answer: {summary:#?}"
        );
        assert_eq!(a.body, answers[0].body, "{summary:#?}");
    }
    assert_eq!(batch_of(&s.app, &s.user, batch).await["version"], 2);
}

#[tokio::test]
async fn a_retried_api_key_post_is_refused_because_the_secret_is_not_stored() {
    let s = setup().await;
    let key = [("idempotency-key", "key-for-ci")];
    let first = call(
        &s.app,
        Method::POST,
        "/v1/api-keys",
        &s.user,
        Payload::Json(json!({"name": "ci"})),
        &key,
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let secret = first.body["api_key"].as_str().expect("api_key").to_string();
    let second = call(
        &s.app,
        Method::POST,
        "/v1/api-keys",
        &s.user,
        Payload::Json(json!({"name": "ci"})),
        &key,
    )
    .await;
    assert_error(
        &second,
        StatusCode::CONFLICT,
        "idempotency_secret_not_replayable",
    );
    assert_eq!(
        second.body["error"]["details"]["api_key_id"], first.body["id"],
        "{}",
        second.body
    );
    assert!(!second.body.to_string().contains(&secret));
    let (_, keys) = s.app.get("/v1/api-keys", &s.user).await;
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    // The secret is nowhere in the database either.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE body::text LIKE '%' || $1 || '%'",
    )
    .bind(&secret)
    .fetch_one(s.app.pool())
    .await
    .expect("query");
    assert_eq!(stored, 0);
}

// ---------------------------------------------------------------------------------------
// Tags

#[tokio::test]
async fn a_tag_is_revoked_once() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let batch = s.app.batch(&s.user, product, "L-1").await;
    let tag = Uuid::new_v4();
    issue(&s.app, &s.user, batch, &[tag, Uuid::new_v4()]).await;

    let a = call(
        &s.app,
        Method::POST,
        &format!("/v1/tags/{tag}/revoke"),
        &s.user,
        Payload::Json(json!({"reason": " stolen "})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["tag_id"], tag.to_string());
    assert_eq!(a.body["batch_id"], batch.to_string());
    assert_eq!(a.body["reason"], "stolen");
    let b = batch_of(&s.app, &s.user, batch).await;
    assert_eq!(a.body["batch_version"], b["version"]);
    assert_eq!(b["revoked_tag_count"], 1);
    assert_eq!(b["tag_count"], 2);

    let a = call(
        &s.app,
        Method::POST,
        &format!("/v1/tags/{tag}/revoke"),
        &s.user,
        Payload::Json(json!({"reason": "stolen"})),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::CONFLICT, "tag.already_revoked");

    let a = call(
        &s.app,
        Method::POST,
        &format!("/v1/tags/{}/revoke", Uuid::new_v4()),
        &s.user,
        Payload::Json(json!({"reason": "stolen"})),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        batch_of(&s.app, &s.user, batch).await["revoked_tag_count"],
        1
    );
}

// ---------------------------------------------------------------------------------------
// API keys

#[tokio::test]
async fn an_api_key_works_once_issued_and_stops_when_revoked() {
    let s = setup().await;
    let product = s.app.product(&s.user, &gtin(1)).await;
    let created = call(
        &s.app,
        Method::POST,
        "/v1/api-keys",
        &s.user,
        Payload::Json(json!({"name": "ci"})),
        &[],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["role"], "factory_user");
    assert_eq!(created.body["name"], "ci");
    assert_eq!(created.body["factory_id"], s.a.to_string());
    assert_eq!(created.body["revoked_at"], Value::Null);
    let key_id = id_of(&created.body);
    let secret = created.body["api_key"]
        .as_str()
        .expect("api_key")
        .to_string();
    let prefix = created.body["prefix"].as_str().expect("prefix").to_string();
    assert!(secret.starts_with(&format!("vk_{prefix}_")), "{secret}");
    let key = As::ApiKey(secret.clone());

    let (status, list) = s.app.get("/v1/products", &key).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["items"][0]["id"], product.to_string());

    // The secret and its hash are never listed.
    let hash: String = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_one(s.app.pool())
        .await
        .expect("stored hash");
    let (status, keys) = s.app.get("/v1/api-keys", &s.user).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["id"], key_id.to_string());
    assert_eq!(keys[0]["prefix"], prefix);
    let text = keys.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&secret[prefix.len() + 4..]),
        "secret listed: {text}"
    );
    assert!(
        !text.contains(&hash)
            && !text.contains("secret_sha256")
            && keys[0].get("api_key").is_none(),
        "{text}"
    );

    let response = s
        .app
        .request(Method::DELETE, &format!("/v1/api-keys/{key_id}"), &s.user)
        .send()
        .await
        .expect("delete sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let a = call(
        &s.app,
        Method::GET,
        "/v1/products",
        &key,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(a.header("www-authenticate").is_some());
    let (_, keys) = s.app.get("/v1/api-keys", &s.user).await;
    assert!(keys[0]["revoked_at"].is_string(), "{keys}");

    // Revoking twice is a state conflict; an unknown key is 404.
    let a = call(
        &s.app,
        Method::DELETE,
        &format!("/v1/api-keys/{key_id}"),
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::CONFLICT, "api_key.already_revoked");
    let a = call(
        &s.app,
        Method::DELETE,
        &format!("/v1/api-keys/{}", Uuid::now_v7()),
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");

    for garbage in [
        "garbage",
        "vk_abcdefgh_0123456789abcdefghijABCDEFGHIJ01",
        &format!("{}x", &secret[..secret.len() - 1]),
    ] {
        let a = call(
            &s.app,
            Method::GET,
            "/v1/products",
            &As::ApiKey(garbage.to_string()),
            Payload::Empty,
            &[],
        )
        .await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(a.header("www-authenticate").is_some(), "{garbage}");
    }
}

#[tokio::test]
async fn api_keys_carry_only_the_roles_a_factory_may_hand_out() {
    let s = setup().await;
    let (status, viewer) = s
        .app
        .post(
            "/v1/api-keys",
            &s.user,
            json!({"name": "ro", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{viewer}");
    assert_eq!(viewer["role"], "viewer");
    let a = call(
        &s.app,
        Method::POST,
        "/v1/api-keys",
        &s.user,
        Payload::Json(json!({"name": "root", "role": "admin"})),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "api_key.admin_role");
    let a = call(
        &s.app,
        Method::POST,
        "/v1/api-keys",
        &s.user,
        Payload::Json(json!({"name": "x", "role": "owner"})),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_role");
    assert_eq!(a.body["error"]["details"]["field"], "role");
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE role = 'admin'")
        .fetch_one(s.app.pool())
        .await
        .expect("count");
    assert_eq!(admins, 0);
}

// ---------------------------------------------------------------------------------------
// Rate limit

#[tokio::test]
async fn api_keys_are_rate_limited_per_key_in_redis() {
    let app = spawn_app_with(|s| s.api_key_requests_per_minute = 5).await;
    let factory = app.factory("Acme").await;
    let user = app.token(factory, Role::FactoryUser);
    let (first_id, first) = new_api_key(&app, &user, "first").await;
    let (second_id, second) = new_api_key(&app, &user, "second").await;
    let first = As::ApiKey(first);
    for i in 0..5 {
        let (status, body) = app.get("/v1/products", &first).await;
        assert_eq!(status, StatusCode::OK, "request {}: {body}", i + 1);
    }
    let a = call(
        &app,
        Method::GET,
        "/v1/products",
        &first,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = a
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        a.body["error"]["details"]["retry_after_seconds"],
        retry_after
    );

    // Another key has its own budget; tokens are not limited.
    let (status, body) = app.get("/v1/products", &As::ApiKey(second)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for _ in 0..7 {
        let (status, body) = app.get("/v1/products", &user).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // The counters live in Redis under the app's prefix, one per key.
    let prefix = &app.settings.redis_prefix;
    let keys: Vec<String> = app
        .redis
        .next()
        .scan_buffered(format!("{prefix}*"), Some(100), None)
        .map(|k| k.expect("scan").as_str().expect("utf-8 key").to_string())
        .collect()
        .await;
    for id in [first_id, second_id] {
        let matching: Vec<&String> = keys
            .iter()
            .filter(|k| k.contains(&id.to_string()))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one Redis key for API key {id} in {keys:?}"
        );
        let exists: i64 = app
            .redis
            .exists(matching[0].as_str())
            .await
            .expect("EXISTS");
        assert_eq!(exists, 1);
    }
}

// ---------------------------------------------------------------------------------------
// Conventions

#[tokio::test]
async fn every_error_answers_with_the_envelope_and_the_request_id() {
    let s = setup().await;
    let viewer = s.app.token(s.a, Role::Viewer);
    let product = s.app.product(&s.user, &gtin(1)).await;
    let batch = s.app.batch(&s.user, product, "L-1").await;
    let cases: Vec<(StatusCode, &str, Answer)> = vec![
        (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            call(
                &s.app,
                Method::GET,
                "/v1/products",
                &As::Nobody,
                Payload::Empty,
                &[],
            )
            .await,
        ),
        (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            call(
                &s.app,
                Method::GET,
                "/v1/products",
                &As::Token("not.a.jwt".into()),
                Payload::Empty,
                &[],
            )
            .await,
        ),
        (
            StatusCode::FORBIDDEN,
            "forbidden",
            call(
                &s.app,
                Method::POST,
                "/v1/products",
                &viewer,
                Payload::Json(product_body(&gtin(2))),
                &[],
            )
            .await,
        ),
        (
            StatusCode::NOT_FOUND,
            "not_found",
            call(
                &s.app,
                Method::GET,
                &format!("/v1/batches/{}", Uuid::now_v7()),
                &s.user,
                Payload::Empty,
                &[],
            )
            .await,
        ),
        (
            StatusCode::BAD_REQUEST,
            "invalid_path",
            call(
                &s.app,
                Method::GET,
                "/v1/batches/42",
                &s.user,
                Payload::Empty,
                &[],
            )
            .await,
        ),
        (
            StatusCode::CONFLICT,
            "batch.close_requires_active",
            transition(&s.app, &s.user, batch, "close", &[]).await,
        ),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            s.upload_json(batch).await,
        ),
        (
            StatusCode::NOT_FOUND,
            "route_not_found",
            call(
                &s.app,
                Method::GET,
                "/v1/nothing-here",
                &s.user,
                Payload::Empty,
                &[],
            )
            .await,
        ),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            call(
                &s.app,
                Method::PUT,
                "/v1/products",
                &s.user,
                Payload::Empty,
                &[],
            )
            .await,
        ),
    ];
    for (status, code, answer) in &cases {
        assert_eq!(
            answer
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{code}"
        );
        assert_error(answer, *status, code);
        let error = answer.body["error"].as_object().expect("error object");
        let fields: HashSet<&str> = error.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            HashSet::from(["code", "message", "request_id", "details"]),
            "{code}: {}",
            answer.body
        );
        assert_eq!(
            answer.body.as_object().map(|o| o.len()),
            Some(1),
            "only `error` at the top: {}",
            answer.body
        );
    }
    let ids: HashSet<&str> = cases
        .iter()
        .filter_map(|(_, _, a)| a.header("x-request-id"))
        .collect();
    assert_eq!(ids.len(), cases.len(), "every request gets its own id");
    let unauthorized = &cases[0].2;
    assert_eq!(unauthorized.header("www-authenticate"), Some("Bearer"));
}

impl Setup {
    /// A CSV upload with the wrong content type.
    async fn upload_json(&self, batch: Uuid) -> Answer {
        call(
            &self.app,
            Method::POST,
            &format!("/v1/batches/{batch}/imports"),
            &self.user,
            Payload::Raw("application/json", b"[]".to_vec()),
            &[],
        )
        .await
    }
}

#[tokio::test]
async fn client_request_and_correlation_ids_are_echoed() {
    let s = setup().await;
    let ids = [
        ("x-request-id", "req-abc-123"),
        ("x-correlation-id", "corr-xyz-9"),
    ];
    let ok = call(
        &s.app,
        Method::GET,
        "/v1/products",
        &s.user,
        Payload::Empty,
        &ids,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(ok.header("x-correlation-id"), Some("corr-xyz-9"));

    let failed = call(
        &s.app,
        Method::GET,
        "/v1/products",
        &As::Nobody,
        Payload::Empty,
        &ids,
    )
    .await;
    assert_error(&failed, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(failed.body["error"]["request_id"], "req-abc-123");
    assert_eq!(failed.header("x-correlation-id"), Some("corr-xyz-9"));

    // Without ids the server makes one, and the correlation id defaults to it.
    let fresh = call(
        &s.app,
        Method::GET,
        "/v1/health",
        &As::Nobody,
        Payload::Empty,
        &[],
    )
    .await;
    let id = fresh
        .header("x-request-id")
        .expect("x-request-id")
        .to_string();
    assert!(!id.is_empty());
    assert_eq!(fresh.header("x-correlation-id"), Some(id.as_str()));

    // An id a client may not choose (spaces) is replaced.
    let replaced = call(
        &s.app,
        Method::GET,
        "/v1/health",
        &As::Nobody,
        Payload::Empty,
        &[("x-request-id", "a b")],
    )
    .await;
    assert_ne!(replaced.header("x-request-id"), Some("a b"));
    assert!(
        replaced
            .header("x-request-id")
            .is_some_and(|v| !v.is_empty())
    );
}

#[tokio::test]
async fn health_and_readiness_answer_without_credentials() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/health", &As::Nobody).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/v1/ready", &As::Nobody).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"], "ok", "{body}");
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
}

/// Requests served before the first scrape of `/metrics` are counted: the recorder is
/// installed when the app is built, not by the first scrape. (Under nextest, one process
/// per test, nothing else can have installed it.)
#[tokio::test]
async fn metrics_count_the_requests_served_before_the_first_scrape() {
    let s = setup().await;
    for _ in 0..3 {
        let (status, _) = s.app.get("/v1/products", &s.user).await;
        assert_eq!(status, StatusCode::OK);
    }
    let response = s
        .app
        .request(Method::GET, "/metrics", &As::Nobody)
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("metrics text");
    assert!(
        text.contains("http_requests_total"),
        "no http_requests_total in:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains("route=\"/v1/products\"")
            && l.contains("status=\"200\"")),
        "GET /v1/products is not counted:\n{text}"
    );
}

const API_ROUTES: [(&str, &[&str]); 14] = [
    ("/v1/factories", &["post"]),
    ("/v1/factories/{id}", &["get"]),
    ("/v1/products", &["get", "post"]),
    ("/v1/products/{id}", &["get"]),
    ("/v1/batches", &["post"]),
    ("/v1/batches/{id}", &["get"]),
    ("/v1/batches/{id}/activate", &["post"]),
    ("/v1/batches/{id}/recall", &["post"]),
    ("/v1/batches/{id}/close", &["post"]),
    ("/v1/tags/{tag_id}/revoke", &["post"]),
    ("/v1/api-keys", &["get", "post"]),
    ("/v1/api-keys/{id}", &["delete"]),
    ("/v1/batches/{id}/imports", &["post"]),
    ("/v1/imports/{id}", &["get"]),
];

async fn openapi(app: &TestApp) -> Value {
    let response = app
        .request(Method::GET, "/openapi.json", &As::Nobody)
        .send()
        .await
        .expect("openapi");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("openapi text");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("/openapi.json is not JSON ({e}): {text}"))
}

#[tokio::test]
async fn the_openapi_document_lists_every_api_route_and_both_security_schemes() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut missing = Vec::new();
    for (path, methods) in API_ROUTES {
        for method in methods {
            if paths.get(path).and_then(|p| p.get(*method)).is_none() {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from /openapi.json: {missing:?}; has {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(
        paths.keys().all(|p| !p.contains(':')),
        "axum-style params leaked: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http", "{schemes}");
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["api_key"]["type"], "apiKey", "{schemes}");
    assert_eq!(schemes["api_key"]["in"], "header", "{schemes}");
    assert!(
        schemes["api_key"]["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case("x-api-key")),
        "{schemes}"
    );
    assert!(
        doc["components"]["schemas"].get("ErrorEnvelope").is_some(),
        "no ErrorEnvelope schema"
    );
}

/// The contract lists `/v1/health`, `/v1/ready`, `/metrics` and `/openapi.json` among the
/// routes; the document describes them too.
#[tokio::test]
async fn the_openapi_document_lists_the_operational_routes() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let paths = doc["paths"].as_object().expect("paths");
    let missing: Vec<&str> = ["/v1/health", "/v1/ready", "/metrics", "/openapi.json"]
        .into_iter()
        .filter(|p| paths.get(*p).and_then(|p| p.get("get")).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing from /openapi.json: {missing:?}"
    );
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_with_the_envelope() {
    let s = setup().await;
    for who in [&s.user, &As::Nobody] {
        let a = call(&s.app, Method::GET, "/v1/nope", who, Payload::Empty, &[]).await;
        assert_error(&a, StatusCode::NOT_FOUND, "route_not_found");
    }
    let a = call(
        &s.app,
        Method::DELETE,
        "/v1/products",
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let a = call(
        &s.app,
        Method::GET,
        &format!("/v1/batches/{}/activate", Uuid::now_v7()),
        &s.user,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let a = call(
        &s.app,
        Method::POST,
        "/v1/health",
        &As::Nobody,
        Payload::Empty,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn events_carry_the_request_metadata() {
    let s = setup().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &s.user,
        Payload::Json(product_body(&gtin(1))),
        &[
            ("x-correlation-id", "corr-123"),
            ("traceparent", traceparent),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let request_id = a.header("x-request-id").expect("x-request-id").to_string();
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT metadata::text FROM events WHERE aggregate_type = 'Product'")
            .fetch_all(s.app.pool())
            .await
            .expect("events");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let metadata: Value = serde_json::from_str(&rows[0]).expect("metadata is JSON");
    assert_eq!(metadata["actor"], "user:factory_user-user", "{metadata}");
    assert_eq!(metadata["factory_id"], s.a.to_string(), "{metadata}");
    assert_eq!(metadata["request_id"], request_id.as_str(), "{metadata}");
    assert_eq!(metadata["correlation_id"], "corr-123", "{metadata}");
    assert!(
        metadata["causation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{metadata}"
    );
    assert_eq!(metadata["traceparent"], traceparent, "{metadata}");

    // Through an API key, the actor names the key, and a trace context is made up.
    let (key_id, key) = new_api_key(&s.app, &s.user, "ci").await;
    let created = call(
        &s.app,
        Method::POST,
        "/v1/products",
        &As::ApiKey(key),
        Payload::Json(product_body(&gtin(2))),
        &[],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let text: String = sqlx::query_scalar(
        "SELECT metadata::text FROM events WHERE aggregate_type = 'Product' AND aggregate_id = $1",
    )
    .bind(id_of(&created.body).to_string())
    .fetch_one(s.app.pool())
    .await
    .expect("event");
    let metadata: Value = serde_json::from_str(&text).expect("metadata is JSON");
    assert_eq!(metadata["actor"], format!("api_key:{key_id}"), "{metadata}");
    assert_eq!(
        metadata["correlation_id"], metadata["request_id"],
        "{metadata}"
    );
    assert!(
        metadata["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-") && t.len() == 55),
        "{metadata}"
    );
}
