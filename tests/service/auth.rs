//! API tokens: writes need a token with the write scope, /v1/admin/ one with admin, reads
//! are open unless `open_reads = false`; missing, malformed, mistyped and revoked tokens are
//! 401, a token without the scope 403, all in the JSON error shape; `mixpool token`
//! creates, lists and revokes them on the database.

use std::process::Command;

use mixpool::registry::tokens::Scope;
use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{corpus, spawn_app_with};
use crate::helpers::{Server, client, token};

async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value, Option<String>) {
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status(), response.json().await.unwrap(), challenge)
}

fn token_cli(database: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mixpool"))
        .arg("token")
        .args(args)
        .env("DATABASE_URL", database)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn each_token_case_gets_its_status_and_nothing_is_written_without_the_scope() {
    let app = spawn_app_with(mixpool::api::SweepLimits::default()).await;
    let upload = |http: &reqwest::Client, name: &str| {
        http.post(app.url(&format!("/v1/partitions?name={name}&train=false")))
            .body(corpus("code_c", 0, 3))
    };
    let anonymous = reqwest::Client::new();

    // Missing: 401 with a Bearer challenge, naming the scope the request needs.
    let (status, body, challenge) = answer(upload(&anonymous, "a")).await;
    assert_eq!(
        (status, challenge.as_deref()),
        (StatusCode::UNAUTHORIZED, Some("Bearer"))
    );
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("POST /v1/partitions") && message.contains("write"),
        "{message}"
    );

    // Malformed, another scheme, a real id with a wrong secret: 401 alike.
    let write = token(&app.pool, Scope::Write).await;
    let (id, _) = write.rsplit_once('_').unwrap();
    for header in [
        "Bearer nonsense".to_string(),
        format!("Basic {write}"),
        format!("Bearer {id}_{}", "0".repeat(48)),
        format!("Bearer {write}x"),
    ] {
        let request = upload(&anonymous, "b").header("authorization", &header);
        let (status, body, _) = answer(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    // A read token cannot write: 403 naming the token's scope.
    let read = token(&app.pool, Scope::Read).await;
    let (status, body, _) = answer(upload(&client(&read), "c")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read scope")
    );
    let (status, _) = app.get("/v1/partitions").await;
    assert_eq!(status, StatusCode::OK);
    let partitions: i64 = sqlx::query_scalar("select count(*) from partitions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(partitions, 0, "refused requests wrote nothing");

    // A write token writes, reads and is refused the admin routes.
    let writer = client(&write);
    let (status, body, _) = answer(upload(&writer, "d")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = answer(writer.get(app.url("/v1/admin/fsck"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Reads are open by default, to anyone.
    let (status, body, _) = answer(anonymous.get(app.url("/v1/partitions/d"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Revoked: refused from the next request on.
    let database = app.database_url().await;
    let name: String = sqlx::query_scalar("select name from tokens where scope = 'write'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let (code, out, err) = token_cli(&database, &["revoke", &name]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body, _) = answer(upload(&writer, "e")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn closed_reads_need_a_read_token_and_the_token_verbs_manage_tokens() {
    let pool = crate::helpers::fresh_db().await;
    let database = crate::helpers::database_url(&pool).await;

    // Created by the command line: the token on stdout, alone.
    let (code, out, err) = token_cli(&database, &["create", "--name", "ci", "--scope", "read"]);
    assert_eq!(code, 0, "{err}");
    let ci = out.trim().to_string();
    assert!(
        ci.starts_with("mpt_") && !ci.contains(char::is_whitespace),
        "{out}"
    );
    assert!(err.contains("shown only this once"), "{err}");
    // A live name is not given twice.
    let (code, _, err) = token_cli(&database, &["create", "--name", "ci", "--scope", "admin"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("revoke it first"), "{err}");
    // Listed without its secret.
    let (code, out, _) = token_cli(&database, &["ls", "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["name"], "ci");
    assert_eq!(listed[0]["scope"], "read");
    assert!(
        !out.contains(ci.rsplit_once('_').unwrap().1),
        "no secret in {out}"
    );

    let data = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL".to_string(), database.clone()),
        ("MIXPOOL_OPEN_READS".to_string(), "false".to_string()),
    ];
    let server = Server::start(data.path(), &env).await;
    let anonymous = reqwest::Client::new();
    let (status, body, _) = answer(anonymous.get(format!("{}/v1/partitions", server.url))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read scope")
    );
    let (status, _, _) = answer(anonymous.get(format!("{}/metrics", server.url))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Health checks stay open for orchestrators.
    let (status, _, _) = answer(anonymous.get(format!("{}/readyz", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    let reader = client(&ci);
    let (status, body, _) = answer(reader.get(format!("{}/v1/partitions", server.url))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select last_used_at from tokens where name = 'ci'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(used.is_some(), "the token's use is recorded");
    assert!(!server.log().contains(&ci), "the token is never logged");
}
