//! Every route of the factory API against every kind of caller: an admin, a factory user,
//! a viewer, a `factory_user` API key, a `viewer` API key, another factory's user, and no
//! credentials. One test per route group; each lists every (route, caller) pair that did
//! not answer as expected.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;
use voketag_domain::Role;
use voketag_tests::{Answer, As, TestApp, id_of, spawn_app_with};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    User,
    Viewer,
    UserKey,
    ViewerKey,
    Foreign,
    Nobody,
}

const EVERYONE: [Who; 7] = [
    Who::Admin,
    Who::User,
    Who::Viewer,
    Who::UserKey,
    Who::ViewerKey,
    Who::Foreign,
    Who::Nobody,
];

impl Who {
    fn writes(self) -> bool {
        matches!(self, Who::Admin | Who::User | Who::UserKey)
    }
}

/// The status each caller must get, in the order of [`EVERYONE`].
#[derive(Debug, Clone, Copy)]
struct Expect([u16; 7]);

impl Expect {
    fn of(self, who: Who) -> u16 {
        let i = EVERYONE
            .iter()
            .position(|w| *w == who)
            .expect("every caller is listed");
        self.0[i]
    }
}

//                                           admin user viewer ukey vkey foreign nobody
/// Reading one of factory A's resources.
const READ: Expect = Expect([200, 200, 200, 200, 200, 404, 401]);
/// Listing: everyone sees a list, of their own factory's things.
const LIST: Expect = Expect([200, 200, 200, 200, 200, 200, 401]);
/// Writing to factory A (or one of its resources), answered with `ok`.
const fn write(ok: u16) -> Expect {
    Expect([ok, ok, 403, ok, 403, 404, 401])
}
/// Registering a factory.
const ADMIN_ONLY: Expect = Expect([201, 403, 403, 403, 403, 403, 401]);
/// Health, readiness, metrics and the OpenAPI document.
const PUBLIC: Expect = Expect([200, 200, 200, 200, 200, 200, 200]);

enum Payload {
    Empty,
    Json(Value),
    Csv(String),
}

/// Factory A with a product, a draft batch holding issued tags, an import and two API keys;
/// factory B with its own user and product; an admin from a third factory.
struct World {
    app: TestApp,
    a: Uuid,
    creds: Vec<As>,
    product: Uuid,
    foreign_product: Uuid,
    batch: Uuid,
    /// Issued into `batch`: the first for callers who must be refused, one per writer.
    tags: Vec<Uuid>,
    import: Uuid,
    user_key: Uuid,
    viewer_key: Uuid,
}

/// A valid GTIN-14 for each `n`.
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

fn csv(tags: &[Uuid]) -> String {
    let mut s = String::from("tag_id\n");
    for t in tags {
        s.push_str(&format!("{t}\n"));
    }
    s
}

async fn world() -> World {
    // The API keys make many requests here; the rate limit has its own test.
    let app = spawn_app_with(|s| s.api_key_requests_per_minute = 10_000).await;
    let hq = app.factory("Headquarters").await;
    let a = app.factory("Factory A").await;
    let b = app.factory("Factory B").await;
    let admin = app.token(hq, Role::Admin);
    let user = app.token(a, Role::FactoryUser);
    let viewer = app.token(a, Role::Viewer);
    let foreign = app.token(b, Role::FactoryUser);

    let product = app.product(&user, &gtin(1)).await;
    let foreign_product = app.product(&foreign, &gtin(2)).await;
    let batch = app.batch(&user, product, "L-1").await;
    let tags: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let (status, accepted) = app
        .upload(&user, batch, "text/csv", csv(&tags).into_bytes())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let import = id_of(&accepted);
    app.drain_imports().await;
    let (status, done) = app.get(&format!("/v1/imports/{import}"), &user).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["tags_issued"], tags.len(), "{done}");

    let (status, uk) = app
        .post(
            "/v1/api-keys",
            &user,
            json!({"name": "ci", "role": "factory_user"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{uk}");
    assert_eq!(uk["role"], "factory_user");
    let (status, vk) = app
        .post(
            "/v1/api-keys",
            &user,
            json!({"name": "dashboard", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vk}");
    assert_eq!(vk["role"], "viewer");
    let key = |v: &Value| As::ApiKey(v["api_key"].as_str().expect("api_key").to_string());

    let creds = vec![admin, user, viewer, key(&uk), key(&vk), foreign, As::Nobody];
    World {
        app,
        a,
        creds,
        product,
        foreign_product,
        batch,
        tags,
        import,
        user_key: id_of(&uk),
        viewer_key: id_of(&vk),
    }
}

impl World {
    fn who(&self, who: Who) -> &As {
        &self.creds[EVERYONE.iter().position(|w| *w == who).expect("listed")]
    }

    fn user(&self) -> &As {
        self.who(Who::User)
    }

    async fn call(&self, method: Method, path: &str, who: Who, payload: Payload) -> Answer {
        let mut r = self.app.request(method, path, self.who(who));
        r = match payload {
            Payload::Empty => r,
            Payload::Json(v) => r.json(&v),
            Payload::Csv(text) => r.header("content-type", "text/csv").body(text),
        };
        Answer::read(r.send().await.expect("request sent")).await
    }

    /// A fresh draft batch of A's product.
    async fn draft(&self, lot: String) -> Uuid {
        self.app.batch(self.user(), self.product, &lot).await
    }
}

/// Collects every mismatch of a route group, then fails once listing them all.
struct Table {
    group: &'static str,
    failures: Vec<String>,
    checked: usize,
}

impl Table {
    fn new(group: &'static str) -> Table {
        Table {
            group,
            failures: Vec::new(),
            checked: 0,
        }
    }

    /// Sends the request of `route` (`"<METHOD> <route>"`) to `path` as `who`, checks the
    /// status and, for refusals, the envelope.
    async fn check(
        &mut self,
        w: &World,
        route: &str,
        who: Who,
        path: &str,
        payload: Payload,
        expect: Expect,
    ) -> Answer {
        let expected = expect.of(who);
        let method: Method = route
            .split(' ')
            .next()
            .and_then(|m| m.parse().ok())
            .expect("route starts with its method");
        let answer = w.call(method, path, who, payload).await;
        self.checked += 1;
        let got = answer.status.as_u16();
        let mut fail = |why: String| {
            self.failures.push(format!(
                "({route}, {who:?}, expected {expected}, got {got}): {why}; body {}",
                answer.body
            ))
        };
        if got != expected {
            fail("wrong status".into());
            return answer;
        }
        let code = answer.body["error"]["code"].as_str().unwrap_or("");
        let wanted_code = match expected {
            401 => Some("unauthorized"),
            403 => Some("forbidden"),
            404 => Some("not_found"),
            _ => None,
        };
        if let Some(wanted) = wanted_code {
            if code != wanted {
                fail(format!("error code `{code}`, not `{wanted}`"));
            }
            let request_id = answer.body["error"]["request_id"].as_str().unwrap_or("");
            let header = answer
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if request_id.is_empty() || request_id != header {
                fail(format!(
                    "request_id `{request_id}` vs x-request-id `{header}`"
                ));
            }
        }
        if expected == 401 && answer.headers.get("www-authenticate").is_none() {
            fail("no WWW-Authenticate header".into());
        }
        answer
    }

    /// Records a failed check of an answer's body.
    fn expect_body(&mut self, route: &str, who: Who, ok: bool, why: &str, answer: &Answer) {
        self.checked += 1;
        if !ok {
            self.failures
                .push(format!("({route}, {who:?}): {why}; body {}", answer.body));
        }
    }

    fn finish(self) {
        assert!(self.checked > 0);
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} checks failed:\n{}",
            self.group,
            self.failures.len(),
            self.checked,
            self.failures.join("\n")
        );
    }
}

fn ids(list: &Value) -> Vec<String> {
    let items = list.get("items").unwrap_or(list);
    items
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn factory_routes_by_role() {
    let w = world().await;
    let mut t = Table::new("factories");
    for who in EVERYONE {
        let name = format!("New {who:?}");
        let a = t
            .check(
                &w,
                "POST /v1/factories",
                who,
                "/v1/factories",
                Payload::Json(json!({"name": name})),
                ADMIN_ONLY,
            )
            .await;
        if a.status == StatusCode::CREATED {
            t.expect_body(
                "POST /v1/factories",
                who,
                a.body["name"] == name.as_str(),
                "name",
                &a,
            );
        }
        let a = t
            .check(
                &w,
                "GET /v1/factories/{id}",
                who,
                &format!("/v1/factories/{}", w.a),
                Payload::Empty,
                READ,
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "GET /v1/factories/{id}",
                who,
                a.body["id"] == w.a.to_string().as_str(),
                "id",
                &a,
            );
        }
    }
    // Nothing was registered by anyone but the admin.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM factories WHERE name LIKE 'New %'")
        .fetch_one(w.app.pool())
        .await
        .expect("count");
    assert_eq!(count, 1);
    t.finish();
}

#[tokio::test]
async fn product_routes_by_role() {
    let w = world().await;
    let mut t = Table::new("products");
    for (i, who) in EVERYONE.into_iter().enumerate() {
        // Everyone names factory A; only the admin must.
        let body = json!({"factory_id": w.a, "gtin": gtin(10 + i as u32), "name": "Cream", "brand": "Acme", "intended_markets": ["BR"]});
        let a = t
            .check(
                &w,
                "POST /v1/products",
                who,
                "/v1/products",
                Payload::Json(body),
                write(201),
            )
            .await;
        if a.status == StatusCode::CREATED {
            t.expect_body(
                "POST /v1/products",
                who,
                a.body["factory_id"] == w.a.to_string().as_str(),
                "factory_id",
                &a,
            );
        }

        let a = t
            .check(
                &w,
                "GET /v1/products",
                who,
                "/v1/products?limit=200",
                Payload::Empty,
                LIST,
            )
            .await;
        if a.status == StatusCode::OK {
            let listed = ids(&a.body);
            let sees_a = listed.contains(&w.product.to_string());
            let sees_b = listed.contains(&w.foreign_product.to_string());
            let (want_a, want_b) = match who {
                Who::Admin => (true, true),
                Who::Foreign => (false, true),
                _ => (true, false),
            };
            t.expect_body(
                "GET /v1/products",
                who,
                sees_a == want_a && sees_b == want_b,
                "lists the wrong factories",
                &a,
            );
        }

        let a = t
            .check(
                &w,
                "GET /v1/products/{id}",
                who,
                &format!("/v1/products/{}", w.product),
                Payload::Empty,
                READ,
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "GET /v1/products/{id}",
                who,
                a.body["id"] == w.product.to_string().as_str(),
                "id",
                &a,
            );
        }
    }
    // Asking for another factory's list by name gives one's own.
    let a = t
        .check(
            &w,
            "GET /v1/products?factory_id=A",
            Who::Foreign,
            &format!("/v1/products?factory_id={}", w.a),
            Payload::Empty,
            LIST,
        )
        .await;
    t.expect_body(
        "GET /v1/products?factory_id=A",
        Who::Foreign,
        !ids(&a.body).contains(&w.product.to_string()),
        "foreign list leaks",
        &a,
    );
    t.finish();
}

#[tokio::test]
async fn batch_routes_by_role() {
    let w = world().await;
    let mut t = Table::new("batches");
    for who in EVERYONE {
        let body = json!({"product_id": w.product, "lot": format!("NEW-{who:?}"), "production_date": "2026-11-01"});
        let a = t
            .check(
                &w,
                "POST /v1/batches",
                who,
                "/v1/batches",
                Payload::Json(body),
                write(201),
            )
            .await;
        if a.status == StatusCode::CREATED {
            t.expect_body(
                "POST /v1/batches",
                who,
                a.body["status"] == "draft",
                "status",
                &a,
            );
        }

        let a = t
            .check(
                &w,
                "GET /v1/batches/{id}",
                who,
                &format!("/v1/batches/{}", w.batch),
                Payload::Empty,
                READ,
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "GET /v1/batches/{id}",
                who,
                a.body["tag_count"] == 4,
                "tag_count",
                &a,
            );
        }

        // Writers act on a batch of their own in the right state; the others on A's batch.
        let target = if who.writes() {
            w.draft(format!("ACT-{who:?}")).await
        } else {
            w.batch
        };
        let a = t
            .check(
                &w,
                "POST /v1/batches/{id}/activate",
                who,
                &format!("/v1/batches/{target}/activate"),
                Payload::Empty,
                write(200),
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "POST /v1/batches/{id}/activate",
                who,
                a.body["status"] == "active",
                "status",
                &a,
            );
        }

        let target = if who.writes() {
            w.draft(format!("REC-{who:?}")).await
        } else {
            w.batch
        };
        let a = t
            .check(
                &w,
                "POST /v1/batches/{id}/recall",
                who,
                &format!("/v1/batches/{target}/recall"),
                Payload::Json(json!({"reason": "contamination"})),
                write(200),
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "POST /v1/batches/{id}/recall",
                who,
                a.body["recall_reason"] == "contamination",
                "reason",
                &a,
            );
        }

        let target = if who.writes() {
            let b = w.draft(format!("CLO-{who:?}")).await;
            let (status, body) = w
                .app
                .post(&format!("/v1/batches/{b}/activate"), w.user(), Value::Null)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            b
        } else {
            w.batch
        };
        let a = t
            .check(
                &w,
                "POST /v1/batches/{id}/close",
                who,
                &format!("/v1/batches/{target}/close"),
                Payload::Empty,
                write(200),
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "POST /v1/batches/{id}/close",
                who,
                a.body["status"] == "closed",
                "status",
                &a,
            );
        }
    }
    // The refused callers changed nothing.
    let (_, batch) = w
        .app
        .get(&format!("/v1/batches/{}", w.batch), w.user())
        .await;
    assert_eq!(batch["status"], "draft", "{batch}");
    assert_eq!(batch["version"], 2, "created, then tags issued: {batch}");
    t.finish();
}

#[tokio::test]
async fn tag_routes_by_role() {
    let w = world().await;
    let mut t = Table::new("tags");
    let mut next_writer_tag = 1;
    for who in EVERYONE {
        let tag = if who.writes() {
            next_writer_tag += 1;
            w.tags[next_writer_tag - 1]
        } else {
            w.tags[0]
        };
        let a = t
            .check(
                &w,
                "POST /v1/tags/{tag_id}/revoke",
                who,
                &format!("/v1/tags/{tag}/revoke"),
                Payload::Json(json!({"reason": "stolen"})),
                write(200),
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "POST /v1/tags/{tag_id}/revoke",
                who,
                a.body["tag_id"] == tag.to_string().as_str(),
                "tag_id",
                &a,
            );
        }
    }
    let (_, batch) = w
        .app
        .get(&format!("/v1/batches/{}", w.batch), w.user())
        .await;
    assert_eq!(batch["revoked_tag_count"], 3, "one per writer: {batch}");
    t.finish();
}

#[tokio::test]
async fn api_key_routes_by_role() {
    let w = world().await;
    let mut t = Table::new("api-keys");
    for who in EVERYONE {
        let body = json!({"factory_id": w.a, "name": format!("key-{who:?}")});
        let a = t
            .check(
                &w,
                "POST /v1/api-keys",
                who,
                "/v1/api-keys",
                Payload::Json(body),
                write(201),
            )
            .await;
        if a.status == StatusCode::CREATED {
            let ok = a.body["factory_id"] == w.a.to_string().as_str()
                && a.body["role"] == "factory_user"
                && a.body["api_key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("vk_"));
            t.expect_body(
                "POST /v1/api-keys",
                who,
                ok,
                "factory_id, role or api_key",
                &a,
            );
        }

        let a = t
            .check(
                &w,
                "GET /v1/api-keys",
                who,
                "/v1/api-keys",
                Payload::Empty,
                LIST,
            )
            .await;
        if a.status == StatusCode::OK {
            let listed = ids(&a.body);
            let sees_a = listed.contains(&w.user_key.to_string())
                && listed.contains(&w.viewer_key.to_string());
            let no_secret = !a.body.to_string().contains("secret")
                && a.body.to_string().matches("vk_").count() == 0;
            t.expect_body(
                "GET /v1/api-keys",
                who,
                sees_a == (who != Who::Foreign) && no_secret,
                "lists the wrong keys",
                &a,
            );
        }

        // Writers revoke a key of their own; the others try a key that must survive.
        let (status, victim) = w
            .app
            .post(
                "/v1/api-keys",
                w.user(),
                json!({"name": format!("victim-{who:?}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{victim}");
        let victim_id = id_of(&victim);
        let a = t
            .check(
                &w,
                "DELETE /v1/api-keys/{id}",
                who,
                &format!("/v1/api-keys/{victim_id}"),
                Payload::Empty,
                write(204),
            )
            .await;
        let revoked: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE key_id = $1")
                .bind(victim_id)
                .fetch_one(w.app.pool())
                .await
                .expect("key row");
        t.expect_body(
            "DELETE /v1/api-keys/{id}",
            who,
            revoked.is_some() == (a.status == StatusCode::NO_CONTENT),
            "revocation state",
            &a,
        );
    }
    t.finish();
}

#[tokio::test]
async fn import_routes_by_role() {
    let w = world().await;
    let mut t = Table::new("imports");
    for who in EVERYONE {
        let a = t
            .check(
                &w,
                "POST /v1/batches/{id}/imports",
                who,
                &format!("/v1/batches/{}/imports", w.batch),
                Payload::Csv(csv(&[Uuid::new_v4()])),
                write(202),
            )
            .await;
        if a.status == StatusCode::ACCEPTED {
            t.expect_body(
                "POST /v1/batches/{id}/imports",
                who,
                a.body["status"] == "queued",
                "status",
                &a,
            );
        }
        let a = t
            .check(
                &w,
                "GET /v1/imports/{id}",
                who,
                &format!("/v1/imports/{}", w.import),
                Payload::Empty,
                READ,
            )
            .await;
        if a.status == StatusCode::OK {
            t.expect_body(
                "GET /v1/imports/{id}",
                who,
                a.body["status"] == "completed",
                "status",
                &a,
            );
        }
    }
    let imports: i64 = sqlx::query_scalar("SELECT count(*) FROM imports")
        .fetch_one(w.app.pool())
        .await
        .expect("count");
    assert_eq!(imports, 1 + 3, "the fixture's and one per writer");
    t.finish();
}

#[tokio::test]
async fn operational_routes_by_role() {
    let w = world().await;
    let mut t = Table::new("operational");
    for who in EVERYONE {
        for path in ["/v1/health", "/v1/ready", "/metrics", "/openapi.json"] {
            t.check(
                &w,
                &format!("GET {path}"),
                who,
                path,
                Payload::Empty,
                PUBLIC,
            )
            .await;
        }
    }
    t.finish();
}
