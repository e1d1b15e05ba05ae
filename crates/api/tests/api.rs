//! The forms API contract, end to end over HTTP against real Postgres. Every bad-input case
//! asserts both the error and that nothing was written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Env;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use uuid::Uuid;

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn qid(form: &Value, alias: &str) -> String {
    form["questions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["alias"] == alias)
        .map(id)
        .unwrap()
}

#[tokio::test]
async fn forms_and_questions_crud() {
    let t = Env::new().await;
    let form = t.sample_form().await;
    let fid = id(&form);
    assert_eq!(form["title"], "Sample");
    assert_eq!(form["version"], 1);
    let qs = form["questions"].as_array().unwrap();
    assert_eq!(qs.len(), 9);
    assert!(
        qs.iter()
            .all(|q| Uuid::parse_str(q["id"].as_str().unwrap()).is_ok())
    );
    assert_eq!(qs[5]["options"][1], json!({"code": "pro", "label": "Pro"}));
    assert_eq!(qs[0]["required"], true);
    assert_eq!(qs[1]["required"], false);

    let got = t.get(&format!("/v1/forms/{fid}")).await;
    assert_eq!(got.ok(200)["questions"], form["questions"]);

    // Add, change and delete a question; the form's version follows.
    let q = t
        .post(
            &format!("/v1/forms/{fid}/questions"),
            json!({"label": "City", "type": "text", "alias": "city"}),
        )
        .await;
    let city = id(q.ok(201));
    assert_eq!(q.body["position"], 9);
    let p = t
        .patch(
            &format!("/v1/forms/{fid}/questions/{city}"),
            json!({"label": "Town", "required": true, "alias": "town"}),
        )
        .await;
    assert_eq!(p.ok(200)["label"], "Town");
    assert_eq!(p.body["alias"], "town");
    let d = t.delete(&format!("/v1/forms/{fid}/questions/{city}")).await;
    d.ok(204);
    let after = t.get(&format!("/v1/forms/{fid}")).await;
    assert_eq!(after.ok(200)["questions"].as_array().unwrap().len(), 9);
    assert_eq!(after.body["version"], 4);
    // A deleted question is gone for the API but kept in the table.
    t.delete(&format!("/v1/forms/{fid}/questions/{city}"))
        .await
        .error(404, "not_found");
    let kept: i64 =
        t.db.query_one(
            "SELECT count(*) FROM questions WHERE id = $1::text::uuid AND deleted_at IS NOT NULL",
            &[&city],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
    // The alias of a deleted question is free again.
    t.post(
        &format!("/v1/forms/{fid}/questions"),
        json!({"label": "Town", "type": "text", "alias": "town"}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn forms_list_is_paginated_by_cursor() {
    let t = Env::new().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id(t
            .post("/v1/forms", json!({"title": format!("F{i}")}))
            .await
            .ok(201)));
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &next {
            Some(c) => format!("/v1/forms?limit=2&after={c}"),
            None => "/v1/forms?limit=2".into(),
        };
        let page = t.get(&path).await;
        let body = page.ok(200);
        seen.extend(body["items"].as_array().unwrap().iter().map(id));
        pages += 1;
        match body["next"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn organizations_never_see_each_other() {
    let t = Env::new().await;
    let form = t.sample_form().await;
    let fid = id(&form);
    let r = t
        .post(
            &format!("/v1/forms/{fid}/responses"),
            json!({"answers": {"name": "Ann"}}),
        )
        .await;
    let rid = id(r.ok(201));

    let other = t.other_org().await;
    let before = t.counts().await;
    let as_other = |m: Method, path: String| {
        t.http
            .request(m, format!("{}{path}", t.base))
            .bearer_auth(&other)
    };
    for (m, path) in [
        (Method::GET, format!("/v1/forms/{fid}")),
        (Method::GET, format!("/v1/forms/{fid}/responses")),
        (Method::GET, format!("/v1/forms/{fid}/responses/{rid}")),
        (Method::DELETE, format!("/v1/forms/{fid}/responses/{rid}")),
        (
            Method::DELETE,
            format!("/v1/forms/{fid}/questions/{}", qid(&form, "bio")),
        ),
    ] {
        t.reply(as_other(m, path)).await.error(404, "not_found");
    }
    let body = json!({"answers": {"name": "Eve"}});
    t.reply(as_other(Method::POST, format!("/v1/forms/{fid}/responses")).json(&body))
        .await
        .error(404, "not_found");
    t.reply(as_other(Method::PATCH, format!("/v1/forms/{fid}/responses/{rid}")).json(&body))
        .await
        .error(404, "not_found");
    t.reply(
        as_other(Method::POST, format!("/v1/forms/{fid}/questions"))
            .json(&json!({"label": "X", "type": "text"})),
    )
    .await
    .error(404, "not_found");
    let list = t.reply(as_other(Method::GET, "/v1/forms".into())).await;
    assert_eq!(list.ok(200)["items"], json!([]));
    assert_eq!(t.counts().await, before);
}

#[tokio::test]
async fn submission_stores_typed_answers_in_one_transaction() {
    let t = Env::new().await;
    let form = t.sample_form().await;
    let fid = id(&form);
    let r = t
        .post(
            &format!("/v1/forms/{fid}/responses"),
            json!({
                "answers": {
                    "name": "Ann", "bio": "=SUM(A1)", "age": 42.5, "email": "Ann@Example.COM",
                    "phone": "+44 20 7946 0958", "plan": "pro", "topics": ["b", "a"],
                    "birthday": "1990-02-28", "agree": true
                },
                "metadata": {"utm": "mail"},
                "source": "web"
            }),
        )
        .await;
    let body = r.ok(201).clone();
    assert_eq!(r.headers["idempotent-replayed"], "false");
    assert_eq!(body["revision"], 1);
    assert_eq!(body["source"], "web");
    assert_eq!(body["metadata"], json!({"utm": "mail"}));
    let answers = &body["answers"];
    assert_eq!(answers[qid(&form, "email")]["value"], "Ann@example.com");
    assert_eq!(answers[qid(&form, "phone")]["value"], "+442079460958");
    assert_eq!(answers[qid(&form, "phone")]["alias"], "phone");
    assert_eq!(answers[qid(&form, "topics")]["value"], json!(["b", "a"]));

    // The typed rows, as stored.
    let rows = t
        .db
        .query(
            "SELECT q.alias, a.value_text, a.value_number::text, a.value_boolean, a.value_date::text, a.value_choices
             FROM answers a JOIN questions q ON q.id = a.question_id
             WHERE a.form_id = $1::text::uuid AND a.response_id = $2::text::uuid ORDER BY q.position",
            &[&fid, &id(&body)],
        )
        .await
        .unwrap();
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}={:?}/{:?}/{:?}/{:?}/{:?}",
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, Option<bool>>(3),
                r.get::<_, Option<String>>(4),
                r.get::<_, Option<Vec<String>>>(5)
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            "name=Some(\"Ann\")/None/None/None/None",
            "bio=Some(\"=SUM(A1)\")/None/None/None/None",
            "age=None/Some(\"42.5\")/None/None/None",
            "email=Some(\"Ann@example.com\")/None/None/None/None",
            "phone=Some(\"+442079460958\")/None/None/None/None",
            "plan=Some(\"pro\")/None/None/None/None",
            "topics=None/None/None/None/Some([\"b\", \"a\"])",
            "birthday=None/None/None/Some(\"1990-02-28\")/None",
            "agree=None/None/Some(true)/None/None",
        ]
    );
    let fetched = t
        .get(&format!("/v1/forms/{fid}/responses/{}", id(&body)))
        .await;
    assert_eq!(fetched.ok(200), &body);
}

#[tokio::test]
async fn idempotency_key_replays_or_conflicts() {
    let t = Env::new().await;
    let fid = id(&t.sample_form().await);
    let path = format!("/v1/forms/{fid}/responses");
    let url = format!("{}{path}", t.base);
    let body = json!({"answers": {"name": "Ann", "age": 1}});
    let send = |b: &Value, key: &str| {
        t.http
            .post(&url)
            .bearer_auth(&t.key)
            .header("Idempotency-Key", key)
            .json(b)
    };

    let first = t.reply(send(&body, "k-1")).await;
    let rid = id(first.ok(201));
    let before = t.counts().await;
    // Same key, same body (keys in another order): same response, nothing new.
    let reordered: Value =
        serde_json::from_str(r#"{"answers": {"age": 1, "name": "Ann"}}"#).unwrap();
    let again = t.reply(send(&reordered, "k-1")).await;
    assert_eq!(id(again.ok(201)), rid);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(t.counts().await, before);
    // Same key, different body: 409, nothing written.
    let other = json!({"answers": {"name": "Bob"}});
    t.reply(send(&other, "k-1"))
        .await
        .error(409, "idempotency_key_reused");
    assert_eq!(t.counts().await, before);
    // Malformed key: 400, nothing written.
    t.reply(send(&other, ""))
        .await
        .error(400, "invalid_idempotency_key");
    t.reply(send(&other, &"k".repeat(256)))
        .await
        .error(400, "invalid_idempotency_key");
    assert_eq!(t.counts().await, before);

    // Racing submissions with one key store one response.
    let racing = json!({"answers": {"name": "Race"}});
    let replies = futures::future::join_all((0..8).map(|_| t.reply(send(&racing, "k-race")))).await;
    let ids: std::collections::HashSet<String> = replies.iter().map(|r| id(r.ok(201))).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(t.counts().await[2], before[2] + 1);
}

#[tokio::test]
async fn responses_list_edit_and_delete() {
    let t = Env::new().await;
    let form = t.sample_form().await;
    let fid = id(&form);
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = t
            .post(
                &format!("/v1/forms/{fid}/responses"),
                json!({"answers": {"name": format!("N{i}")}}),
            )
            .await;
        ids.push(id(r.ok(201)));
    }
    // Pages of 2 return all five in submission order.
    let mut seen = Vec::new();
    let mut path = format!("/v1/forms/{fid}/responses?limit=2");
    loop {
        let page = t.get(&path).await;
        let body = page.ok(200).clone();
        seen.extend(body["items"].as_array().unwrap().iter().map(id));
        match body["next"].as_str() {
            Some(c) => path = format!("/v1/forms/{fid}/responses?limit=2&after={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    // Edit: replace one answer, add one, keep the rest; revision moves on; answers rows follow.
    let rid = &ids[0];
    let edited = t
        .patch(
            &format!("/v1/forms/{fid}/responses/{rid}"),
            json!({"answers": {"name": "Zoe", "age": 7}}),
        )
        .await;
    let body = edited.ok(200).clone();
    assert_eq!(body["revision"], 2);
    assert_eq!(body["answers"][qid(&form, "name")]["value"], "Zoe");
    assert_eq!(body["answers"][qid(&form, "age")]["value"], 7);
    // Remove an optional answer.
    let body = t
        .patch(
            &format!("/v1/forms/{fid}/responses/{rid}"),
            json!({"answers": {"age": null}}),
        )
        .await
        .ok(200)
        .clone();
    assert_eq!(body["revision"], 3);
    assert!(body["answers"].get(qid(&form, "age")).is_none());
    let stored: Vec<(String, Option<String>)> =
        t.db.query(
            "SELECT q.alias, a.value_text FROM answers a JOIN questions q ON q.id = a.question_id
             WHERE a.form_id = $1::text::uuid AND a.response_id = $2::text::uuid",
            &[&fid, rid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, vec![("name".to_string(), Some("Zoe".to_string()))]);
    // An edit that changes nothing writes nothing.
    let before = t.counts().await;
    let same = t
        .patch(
            &format!("/v1/forms/{fid}/responses/{rid}"),
            json!({"answers": {"name": "Zoe"}}),
        )
        .await;
    assert_eq!(same.ok(200)["revision"], 3);
    assert_eq!(t.counts().await, before);
    // If-Match on a stale revision: 412, nothing written.
    let stale = t
        .http
        .patch(format!("{}/v1/forms/{fid}/responses/{rid}", t.base))
        .bearer_auth(&t.key)
        .header("If-Match", "\"2\"")
        .json(&json!({"answers": {"name": "Old"}}));
    t.reply(stale).await.error(412, "revision_mismatch");
    assert_eq!(t.counts().await, before);
    let current = t
        .http
        .patch(format!("{}/v1/forms/{fid}/responses/{rid}", t.base))
        .bearer_auth(&t.key)
        .header("If-Match", "3")
        .json(&json!({"metadata": {"checked": true}}));
    assert_eq!(t.reply(current).await.ok(200)["revision"], 4);

    // Delete: gone from the API, kept (soft) in the table with its revision moved on.
    t.delete(&format!("/v1/forms/{fid}/responses/{rid}"))
        .await
        .ok(204);
    t.get(&format!("/v1/forms/{fid}/responses/{rid}"))
        .await
        .error(404, "not_found");
    t.delete(&format!("/v1/forms/{fid}/responses/{rid}"))
        .await
        .error(404, "not_found");
    t.patch(
        &format!("/v1/forms/{fid}/responses/{rid}"),
        json!({"answers": {"name": "X"}}),
    )
    .await
    .error(404, "not_found");
    let list = t.get(&format!("/v1/forms/{fid}/responses?limit=100")).await;
    assert_eq!(list.ok(200)["items"].as_array().unwrap().len(), 4);
    let rev: i32 = t
        .db
        .query_one(
            "SELECT revision FROM responses WHERE form_id = $1::text::uuid AND id = $2::text::uuid AND deleted_at IS NOT NULL",
            &[&fid, rid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rev, 5);
}

#[tokio::test]
async fn submissions_follow_question_changes() {
    let t = Env::new().await;
    let form = t.sample_form().await;
    let fid = id(&form);
    let path = format!("/v1/forms/{fid}/responses");
    // Warm any cached definition, then change the form.
    t.post(&path, json!({"answers": {"name": "A"}}))
        .await
        .ok(201);
    let bio = qid(&form, "bio");
    t.delete(&format!("/v1/forms/{fid}/questions/{bio}"))
        .await
        .ok(204);
    let r = t
        .post(&path, json!({"answers": {"name": "B", "bio": "x"}}))
        .await;
    assert_eq!(
        r.field_codes(),
        vec![("answers.bio".into(), "unknown_question".into())]
    );
    let q = t
        .post(
            &format!("/v1/forms/{fid}/questions"),
            json!({"label": "Vat", "type": "text", "alias": "vat", "required": true}),
        )
        .await;
    q.ok(201);
    let r = t.post(&path, json!({"answers": {"name": "C"}})).await;
    assert_eq!(
        r.field_codes(),
        vec![("answers.vat".into(), "required".into())]
    );
    t.post(&path, json!({"answers": {"name": "C", "vat": "GB1"}}))
        .await
        .ok(201);
}

/// One bad request: what it sends and the error it must get.
struct Bad {
    name: &'static str,
    req: reqwest::RequestBuilder,
    status: u16,
    code: &'static str,
    fields: Vec<(&'static str, &'static str)>,
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let t = Env::new().await;
    let form = t.sample_form().await;
    let fid = id(&form);
    let rid = id(t
        .post(
            &format!("/v1/forms/{fid}/responses"),
            json!({"answers": {"name": "Ann"}}),
        )
        .await
        .ok(201));
    let bio = qid(&form, "bio");
    let url = |p: &str| format!("{}{p}", t.base);
    let post = |p: &str| t.http.post(url(p)).bearer_auth(&t.key);
    let patch = |p: &str| t.http.patch(url(p)).bearer_auth(&t.key);
    let responses = format!("/v1/forms/{fid}/responses");
    let one = format!("/v1/forms/{fid}/responses/{rid}");
    let submit = |answers: Value| post(&responses).json(&json!({ "answers": answers }));
    let big = "x".repeat(1024 * 1024 + 10);

    let cases = vec![
        Bad { name: "malformed JSON", req: post("/v1/forms").header(CONTENT_TYPE, "application/json").body("{\"title\": "), status: 400, code: "malformed_json", fields: vec![] },
        Bad { name: "malformed JSON submission", req: post(&responses).header(CONTENT_TYPE, "application/json").body("{answers: 1}"), status: 400, code: "malformed_json", fields: vec![] },
        Bad { name: "wrong content type", req: post("/v1/forms").header(CONTENT_TYPE, "text/plain").body("{\"title\": \"T\"}"), status: 415, code: "unsupported_media_type", fields: vec![] },
        Bad { name: "no content type", req: post(&responses).body("{\"answers\": {}}"), status: 415, code: "unsupported_media_type", fields: vec![] },
        Bad { name: "body over 1 MiB", req: post("/v1/forms").json(&json!({"title": big})), status: 413, code: "payload_too_large", fields: vec![] },
        Bad { name: "body over 1 MiB, chunked", req: post(&responses).header(CONTENT_TYPE, "application/json").body(chunked(big.clone())), status: 413, code: "payload_too_large", fields: vec![] },
        Bad { name: "missing API key", req: t.http.post(url(&responses)).json(&json!({"answers": {"name": "A"}})), status: 401, code: "unauthorized", fields: vec![] },
        Bad { name: "wrong API key", req: t.http.post(url(&responses)).bearer_auth("ck_wrong").json(&json!({"answers": {"name": "A"}})), status: 401, code: "unauthorized", fields: vec![] },
        Bad { name: "not a bearer", req: t.http.post(url("/v1/forms")).header("Authorization", format!("Basic {}", t.key)).json(&json!({"title": "T"})), status: 401, code: "unauthorized", fields: vec![] },
        Bad { name: "unknown form", req: post(&format!("/v1/forms/{}/responses", Uuid::now_v7())).json(&json!({"answers": {"name": "A"}})), status: 404, code: "not_found", fields: vec![] },
        Bad { name: "malformed form id", req: post("/v1/forms/not-a-uuid/responses").json(&json!({"answers": {"name": "A"}})), status: 404, code: "not_found", fields: vec![] },
        Bad { name: "unknown question", req: submit(json!({"name": "A", "shoe_size": 9})), status: 422, code: "validation_failed", fields: vec![("answers.shoe_size", "unknown_question")] },
        Bad { name: "deleted-question id as key", req: submit(json!({"name": "A", Uuid::now_v7().to_string(): 1})), status: 422, code: "validation_failed", fields: vec![] },
        Bad { name: "wrong types", req: submit(json!({"name": 5, "age": "5", "agree": "yes", "topics": "a", "birthday": 19900101})), status: 422, code: "validation_failed", fields: vec![("answers.age", "wrong_type"), ("answers.agree", "wrong_type"), ("answers.birthday", "wrong_type"), ("answers.name", "wrong_type"), ("answers.topics", "wrong_type")] },
        Bad { name: "missing required answer", req: submit(json!({"age": 3})), status: 422, code: "validation_failed", fields: vec![("answers.name", "required")] },
        Bad { name: "blank required answer", req: submit(json!({"name": "   "})), status: 422, code: "validation_failed", fields: vec![("answers.name", "required")] },
        Bad { name: "choice not among options", req: submit(json!({"name": "A", "plan": "gold", "topics": ["a", "z"]})), status: 422, code: "validation_failed", fields: vec![("answers.plan", "invalid_choice"), ("answers.topics", "invalid_choice")] },
        Bad { name: "invalid email and phone", req: submit(json!({"name": "A", "email": "ann@", "phone": "555-0100"})), status: 422, code: "validation_failed", fields: vec![("answers.email", "invalid_email"), ("answers.phone", "invalid_phone")] },
        Bad { name: "invalid date", req: submit(json!({"name": "A", "birthday": "2023-02-29"})), status: 422, code: "validation_failed", fields: vec![("answers.birthday", "invalid_date")] },
        Bad { name: "text over 50,000 characters", req: submit(json!({"name": "A", "bio": "é".repeat(50_001)})), status: 422, code: "validation_failed", fields: vec![("answers.bio", "too_long")] },
        Bad { name: "NUL in text", req: submit(json!({"name": "A\u{0}B"})), status: 422, code: "validation_failed", fields: vec![("answers.name", "invalid_character")] },
        Bad { name: "answers not an object", req: post(&responses).json(&json!({"answers": [1]})), status: 422, code: "invalid_body", fields: vec![] },
        Bad { name: "unknown body field", req: post(&responses).json(&json!({"answers": {"name": "A"}, "extra": 1})), status: 422, code: "invalid_body", fields: vec![] },
        Bad { name: "metadata not an object", req: post(&responses).json(&json!({"answers": {"name": "A"}, "metadata": "x"})), status: 422, code: "validation_failed", fields: vec![("metadata", "wrong_type")] },
        Bad { name: "bad source", req: post(&responses).json(&json!({"answers": {"name": "A"}, "source": "Web Site"})), status: 422, code: "validation_failed", fields: vec![("source", "invalid")] },
        Bad { name: "form without title", req: post("/v1/forms").json(&json!({"questions": []})), status: 422, code: "invalid_body", fields: vec![] },
        Bad { name: "form with bad questions", req: post("/v1/forms").json(&json!({"title": "T", "questions": [{"label": "", "type": "single_choice"}, {"label": "B", "type": "rating"}]})), status: 422, code: "invalid_body", fields: vec![] },
        Bad { name: "choice without options", req: post("/v1/forms").json(&json!({"title": "T", "questions": [{"label": "A", "type": "single_choice"}, {"label": "B", "type": "text", "alias": "b"}, {"label": "C", "type": "text", "alias": "b"}]})), status: 422, code: "validation_failed", fields: vec![("questions[0].options", "required"), ("questions[2].alias", "duplicate")] },
        Bad { name: "question alias taken", req: post(&format!("/v1/forms/{fid}/questions")).json(&json!({"label": "X", "type": "text", "alias": "name"})), status: 422, code: "validation_failed", fields: vec![("alias", "duplicate")] },
        Bad { name: "question type change", req: patch(&format!("/v1/forms/{fid}/questions/{bio}")).json(&json!({"type": "number", "label": "New"})), status: 422, code: "validation_failed", fields: vec![("type", "immutable")] },
        Bad { name: "question options on text", req: patch(&format!("/v1/forms/{fid}/questions/{bio}")).json(&json!({"options": [{"code": "a", "label": "A"}]})), status: 422, code: "validation_failed", fields: vec![("options", "not_allowed")] },
        Bad { name: "unknown question in path", req: patch(&format!("/v1/forms/{fid}/questions/{}", Uuid::now_v7())).json(&json!({"label": "X"})), status: 404, code: "not_found", fields: vec![] },
        Bad { name: "edit clears a required answer", req: patch(&one).json(&json!({"answers": {"name": null}})), status: 422, code: "validation_failed", fields: vec![("answers.name", "required")] },
        Bad { name: "edit with a wrong type", req: patch(&one).json(&json!({"answers": {"age": "old"}})), status: 422, code: "validation_failed", fields: vec![("answers.age", "wrong_type")] },
        Bad { name: "edit with bad If-Match", req: patch(&one).header("If-Match", "abc").json(&json!({"answers": {"age": 1}})), status: 400, code: "invalid_if_match", fields: vec![] },
        Bad { name: "edit of unknown response", req: patch(&format!("/v1/forms/{fid}/responses/{}", Uuid::now_v7())).json(&json!({"answers": {"age": 1}})), status: 404, code: "not_found", fields: vec![] },
    ];
    let before = t.counts().await;
    let snapshot = t.get(&format!("/v1/forms/{fid}")).await.body;
    let response_before = t.get(&one).await.body;
    for case in cases {
        let reply = t.reply(case.req).await;
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {}",
            case.name,
            reply.body
        );
        assert_eq!(
            reply.body["error"]["code"], case.code,
            "{}: {}",
            case.name, reply.body
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            case.name
        );
        if !case.fields.is_empty() {
            let want: Vec<(String, String)> = case
                .fields
                .iter()
                .map(|(f, c)| (f.to_string(), c.to_string()))
                .collect();
            assert_eq!(reply.field_codes(), want, "{}", case.name);
        }
        assert_eq!(t.counts().await, before, "{} wrote something", case.name);
    }
    assert_eq!(t.get(&format!("/v1/forms/{fid}")).await.body, snapshot);
    assert_eq!(t.get(&one).await.body, response_before);
}

/// A body in 64 KiB chunks without Content-Length (chunked transfer encoding).
fn chunked(data: String) -> reqwest::Body {
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = data
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(parts))
}

#[tokio::test]
async fn bad_queries_and_routes() {
    let t = Env::new().await;
    let fid = id(&t.sample_form().await);
    t.get("/v1/forms?limit=0").await.error(400, "invalid_query");
    t.get("/v1/forms?limit=5000")
        .await
        .error(400, "invalid_query");
    t.get("/v1/forms?limit=abc")
        .await
        .error(400, "invalid_query");
    t.get("/v1/forms?colour=red")
        .await
        .error(400, "invalid_query");
    t.get(&format!("/v1/forms/{fid}/responses?after=bogus"))
        .await
        .error(400, "invalid_cursor");
    t.get("/v1/nothing-here").await.error(404, "not_found");
    t.send(Method::PUT, "/v1/forms", None)
        .await
        .error(405, "method_not_allowed");
}

#[tokio::test]
async fn operational_endpoints() {
    let t = Env::new().await;
    let health = t.reply(t.http.get(format!("{}/healthz", t.base))).await;
    assert_eq!(health.ok(200)["status"], "ok");
    let ready = t.reply(t.http.get(format!("{}/readyz", t.base))).await;
    assert_eq!(ready.ok(200)["status"], "ready");
    let fid = id(&t.sample_form().await);
    t.post(
        &format!("/v1/forms/{fid}/responses"),
        json!({"answers": {"name": "A"}}),
    )
    .await
    .ok(201);
    let metrics = t
        .http
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("collect_api_requests_total{method=\"POST\",route=\"/v1/forms/{form_id}/responses\",status=\"201\"}"), "{metrics}");
    assert!(
        metrics.contains("collect_api_responses_submitted_total"),
        "{metrics}"
    );

    // The OpenAPI document describes every route the router serves.
    let doc = t
        .reply(t.http.get(format!("{}/openapi.json", t.base)))
        .await;
    let paths = doc.ok(200)["paths"].as_object().unwrap().clone();
    for (path, methods) in [
        ("/v1/forms", vec!["get", "post"]),
        ("/v1/forms/{form_id}", vec!["get"]),
        ("/v1/forms/{form_id}/questions", vec!["post"]),
        (
            "/v1/forms/{form_id}/questions/{question_id}",
            vec!["patch", "delete"],
        ),
        ("/v1/forms/{form_id}/responses", vec!["get", "post"]),
        (
            "/v1/forms/{form_id}/responses/{response_id}",
            vec!["get", "patch", "delete"],
        ),
        ("/healthz", vec!["get"]),
        ("/readyz", vec!["get"]),
        ("/metrics", vec!["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(m)).is_some(),
                "openapi.json lacks {m} {path}"
            );
        }
    }
}

#[tokio::test]
async fn readyz_reports_an_unreachable_database() {
    if std::env::var("COLLECT_STACK").is_ok() {
        return; // needs a server of its own
    }
    let port = collect_testkit::process::free_port().unwrap();
    let base = common::start_api(&format!("postgres://postgres@127.0.0.1:{port}/nothing")).await;
    let http = reqwest::Client::new();
    let resp = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready");
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// POSTs `body` (raw JSON text, so number literals reach the server as written).
async fn post_raw(t: &Env, path: &str, body: String) -> common::Reply {
    t.reply(
        t.http
            .post(format!("{}{path}", t.base))
            .bearer_auth(&t.key)
            .header(CONTENT_TYPE, "application/json")
            .body(body),
    )
    .await
}

/// The raw text of a number answer in a reply (parsed without going through a double).
fn number_text(body: &[u8], question: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        value: Box<serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Resp {
        answers: std::collections::BTreeMap<String, Entry>,
    }
    let r: Resp = serde_json::from_slice(body).ok()?;
    r.answers.get(question).map(|e| e.value.get().to_string())
}

#[tokio::test]
async fn answers_keep_their_exact_value() {
    let t = Env::new().await;
    let form = t
        .post(
            "/v1/forms",
            json!({"title": "values", "questions": [
                {"label": "Phone", "type": "phone", "alias": "phone"},
                {"label": "UK phone", "type": "phone", "alias": "uk", "default_region": "GB"},
                {"label": "Amount", "type": "number", "alias": "amount"}
            ]}),
        )
        .await
        .ok(201)
        .clone();
    let fid = id(&form);
    let amount = qid(&form, "amount");
    let responses = format!("/v1/forms/{fid}/responses");
    // Phones by libphonenumber: the UK trunk 0 after +44 is dropped, the default region
    // reads numbers without a country code, impossible numbers are refused naming the field.
    for (given, field, want) in [
        ("+44 (0)20 7946 0958", "phone", "+442079460958"),
        ("+44 07700 900000", "phone", "+447700900000"),
        ("+39 06 6982 1234", "phone", "+390669821234"),
        ("020 7946 0958", "uk", "+442079460958"),
        ("+1 650 253 0000", "uk", "+16502530000"),
    ] {
        let r = t.post(&responses, json!({"answers": {field: given}})).await;
        assert_eq!(
            r.ok(201)["answers"][qid(&form, field)]["value"],
            want,
            "{given}"
        );
    }
    let before = t.counts().await;
    for (given, field) in [
        ("+1 000 000 0000", "phone"),
        ("+44 20 7946", "phone"),
        ("020 7946 0958", "phone"),
        ("+1234", "uk"),
    ] {
        let r = t.post(&responses, json!({"answers": {field: given}})).await;
        r.error(422, "validation_failed");
        assert_eq!(
            r.field_codes(),
            vec![(format!("answers.{field}"), "invalid_phone".to_string())],
            "{given}"
        );
    }
    assert_eq!(t.counts().await, before, "a refused phone wrote something");
    // Numbers keep every digit: in the reply, in the stored document and in the typed row.
    for literal in [
        "12345678901234567890123",
        "0.12345678901234567890",
        "9007199254740993",
        "-1.50",
    ] {
        let r = post_raw(
            &t,
            &responses,
            format!(r#"{{"answers": {{"amount": {literal}}}}}"#),
        )
        .await;
        assert_eq!(r.status.as_u16(), 201, "{literal}: {}", r.body);
        let rid = id(&r.body);
        let raw = t
            .http
            .get(format!("{}{responses}/{rid}", t.base))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(number_text(&raw, &amount).as_deref(), Some(literal));
        let row =
            t.db.query_one(
                "SELECT answers -> $3 ->> 'value', (SELECT value_number::text FROM answers a \
                 WHERE a.form_id = r.form_id AND a.response_id = r.id) \
                 FROM responses r WHERE form_id = $1::text::uuid AND id = $2::text::uuid",
                &[&fid, &rid, &amount],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), literal);
        assert_eq!(row.get::<_, String>(1), literal);
    }
    // An exponent is read exactly too, and stored in numeric's plain form.
    let r = post_raw(&t, &responses, r#"{"answers": {"amount": 1.5e-3}}"#.into()).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let before = t.counts().await;
    let r = post_raw(&t, &responses, r#"{"answers": {"amount": 1e5000}}"#.into()).await;
    r.error(422, "validation_failed");
    assert_eq!(
        r.field_codes(),
        vec![(
            "answers.amount".to_string(),
            "number_out_of_range".to_string()
        )]
    );
    assert_eq!(t.counts().await, before);
    // A default region that is not one is refused with the form.
    t.post(
        "/v1/forms",
        json!({"title": "x", "questions": [{"label": "P", "type": "phone", "default_region": "UK"}]}),
    )
    .await
    .error(422, "validation_failed");
}

#[tokio::test]
async fn responses_larger_than_the_pipeline_carries_are_refused_and_write_nothing() {
    let t = Env::new().await;
    let questions: Vec<Value> = (0..30)
        .map(|i| json!({"label": format!("Q{i}"), "type": "long_text", "alias": format!("q{i}")}))
        .collect();
    let form = t
        .post("/v1/forms", json!({"title": "big", "questions": questions}))
        .await
        .ok(201)
        .clone();
    let fid = id(&form);
    let responses = format!("/v1/forms/{fid}/responses");
    let answers = |range: std::ops::Range<usize>| {
        let mut m = serde_json::Map::new();
        for i in range {
            m.insert(format!("q{i}"), Value::String("x".repeat(45_000)));
        }
        Value::Object(m)
    };
    // Under the 1 MiB body limit, over the 512 KiB document limit: refused, nothing written.
    let before = t.counts().await;
    let r = t
        .post(&responses, json!({ "answers": answers(0..15) }))
        .await;
    r.error(422, "response_too_large");
    assert_eq!(t.counts().await, before);
    // A response that fits, then an edit that would grow it past the limit.
    let r = t
        .post(&responses, json!({ "answers": answers(0..10) }))
        .await;
    let rid = id(r.ok(201));
    let one = format!("{responses}/{rid}");
    let stored = t.get(&one).await.body;
    let before = t.counts().await;
    t.patch(&one, json!({ "answers": answers(10..15) }))
        .await
        .error(422, "response_too_large");
    assert_eq!(t.counts().await, before, "the refused edit wrote something");
    assert_eq!(t.get(&one).await.body, stored);
    // Shrinking stays possible.
    t.patch(&one, json!({"answers": {"q0": "short"}}))
        .await
        .ok(200);
}
