//! Outages: while the database or the object store does not answer, requests get a 503 and
//! nothing is half-written; once it is back, the same server answers again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mixpool::config::Config;
use mixpool::store::S3Config;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{corpus_path, fresh_db};

/// A TCP relay to a real server that can be cut (open connections dropped, new ones closed
/// at once) and restored: an outage without stopping the shared server.
struct Switch {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Switch {
    async fn to(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let switch = Switch {
            addr: listener.local_addr().unwrap(),
            up: Arc::new(AtomicBool::new(true)),
            open: Default::default(),
        };
        let (up, open) = (switch.up.clone(), switch.open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open.lock().unwrap().push(relay.abort_handle());
            }
        });
        switch
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for relay in self.open.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

struct Server {
    url: String,
    client: reqwest::Client,
    _service: mixpool::app::App,
    _data: tempfile::TempDir,
}

impl Server {
    /// The service on `database` (a URL) and `store` (a URL, with `s3` for an S3 one),
    /// with a write token made through `pool`.
    async fn start(pool: &PgPool, database: String, store: String, s3: S3Config) -> Self {
        let token = crate::helpers::token(pool, mixpool::registry::tokens::Scope::Write).await;
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.service.database_url = database;
        config.service.store = store;
        config.service.data = data.path().display().to_string();
        config.service.max_upload_mb = 1;
        config.service.max_wait_seconds = 1;
        config.service.worker = false;
        config.s3 = s3;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service = mixpool::app::App::build(&config, Some(listener))
            .await
            .unwrap();
        Server {
            url: service.url(),
            client: crate::helpers::client(&token),
            _service: service,
            _data: data,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn upload(&self, name: &str, skip: usize) -> (StatusCode, Value) {
        let text: String = std::fs::read_to_string(corpus_path("code_c"))
            .unwrap()
            .lines()
            .skip(skip)
            .take(3)
            .map(|l| format!("{l}\n"))
            .collect();
        let r = self
            .client
            .post(format!(
                "{}/v1/partitions?name={name}&train=false",
                self.url
            ))
            .body(text)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Polls `path` until it answers 200 (the service recovered), for up to 30 s.
    async fn recovers(&self, path: &str) -> Value {
        for _ in 0..300 {
            let (status, body) = self.get(path).await;
            if status == StatusCode::OK {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} did not recover");
    }

    /// The 503s this server counted, caused by the database and by the store.
    async fn backend_errors(&self) -> (u64, u64) {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = |backend: &str| -> u64 {
            let prefix = format!("mixpool_backend_errors_total{{backend=\"{backend}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no {backend} line: {text}"))
                .parse()
                .unwrap()
        };
        (count("database"), count("store"))
    }

    async fn names(&self) -> Vec<String> {
        let list = self.recovers("/v1/partitions").await;
        let mut names: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }
}

fn assert_unavailable((status, body): (StatusCode, Value)) {
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{body}"
    );
}

#[tokio::test]
async fn a_database_outage_is_a_503_and_the_server_recovers_when_it_returns() {
    let direct = fresh_db().await;
    let options = direct.connect_options();
    let target: SocketAddr = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .expect("the test database on an IP address");
    let switch = Switch::to(target).await;
    let url = crate::helpers::database_url(&direct).await;
    let relayed = url.replacen(
        &format!("{}:{}", options.get_host(), options.get_port()),
        &format!("127.0.0.1:{}", switch.addr.port()),
        1,
    );
    assert_ne!(relayed, url, "the database's address is in its URL");
    let store_dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", store_dir.path().display());
    let server = Server::start(&direct, relayed, store, S3Config::default()).await;
    assert_eq!(server.upload("before", 0).await.0, StatusCode::CREATED);

    switch.cut();
    assert_unavailable(server.get("/v1/partitions").await);
    assert_unavailable(server.upload("during", 5).await);
    assert_unavailable(server.get("/readyz").await);
    assert_eq!(server.get("/healthz").await.0, StatusCode::OK, "alive");

    switch.restore();
    server.recovers("/readyz").await;
    assert_eq!(server.names().await, ["before"], "nothing half-written");
    assert_eq!(server.upload("after", 5).await.0, StatusCode::CREATED);
    assert_eq!(server.names().await, ["after", "before"]);
    let (database, store) = server.backend_errors().await;
    assert!(
        database >= 3 && store == 0,
        "{database} database, {store} store errors"
    );
}

#[tokio::test]
async fn an_object_store_outage_is_a_503_and_the_server_recovers_when_it_returns() {
    let endpoint = std::env::var("MIXPOOL_TEST_S3_ENDPOINT").expect(
        "MIXPOOL_TEST_S3_ENDPOINT names the S3 server for tests (`scripts/s3.sh` starts one)",
    );
    let target: SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the test S3 endpoint as http://IP:PORT");
    let switch = Switch::to(target).await;
    let config = S3Config {
        endpoint: Some(format!("http://{}", switch.addr)),
        region: Some("us-east-1".into()),
        access_key_id: Some("mixpool".into()),
        secret_access_key: Some("mixpool-secret".into()),
    };
    let store = format!("s3://mixpool-test/{}", uuid::Uuid::new_v4());
    let pool = fresh_db().await;
    let url = crate::helpers::database_url(&pool).await;
    let server = Server::start(&pool, url, store, config).await;
    assert_eq!(server.upload("before", 0).await.0, StatusCode::CREATED);

    switch.cut();
    assert_unavailable(server.upload("during", 5).await);
    assert_unavailable(server.get("/readyz").await);
    assert_eq!(
        server.names().await,
        ["before"],
        "no row without its object"
    );

    switch.restore();
    server.recovers("/readyz").await;
    assert_eq!(server.upload("after", 5).await.0, StatusCode::CREATED);
    assert_eq!(server.names().await, ["after", "before"]);
    let (database, store) = server.backend_errors().await;
    assert!(
        database == 0 && store >= 2,
        "{database} database, {store} store errors"
    );
}
