//! What every client verb shares: JSON calls that carry the token and turn the server's
//! errors into messages, retries while the server says to (503) or restarts, waiting for
//! unit models to train, and progress on stderr.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::Server;

/// How long a call keeps retrying a 503 or, once the server has answered, a lost connection.
const RETRY_FOR: Duration = Duration::from_secs(60);

pub struct Api {
    pub url: String,
    http: reqwest::Client,
    /// Whether the server has answered this client yet: before, an unreachable server is an
    /// error at once (a wrong address); after, a restart is waited for.
    answered: std::sync::atomic::AtomicBool,
}

impl Api {
    pub fn new(server: &Server) -> Result<Api> {
        Ok(Api {
            url: server.url.trim_end_matches('/').to_string(),
            http: server.http()?,
            answered: false.into(),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Fails unless the client's token may write: asked before uploads, whose bodies a
    /// refusing server does not read.
    pub async fn can_write(&self) -> Result<()> {
        let me = self.get("/v1/whoami").await?;
        match me["token"]["scope"].as_str() {
            Some("write" | "admin") => Ok(()),
            Some(scope) => bail!(
                "the token {} has the {scope} scope; uploads need write",
                me["token"]["name"]
            ),
            None => bail!(
                "uploads need a token with the write scope: set MIXPOOL_TOKEN (or --token); \
                 `mixpool token create --scope write` makes one"
            ),
        }
    }

    /// The server's answer (status and JSON, `null` when the body is not JSON), whatever the
    /// status; a 503 is asked again for up to [`RETRY_FOR`], and so is a lost connection once
    /// the server has answered (a restart).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<bytes::Bytes>,
    ) -> Result<(StatusCode, Value)> {
        let started = Instant::now();
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.url));
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let answered = self.answered.load(std::sync::atomic::Ordering::Relaxed);
            let retry = started.elapsed() < RETRY_FOR;
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if answered && retry => {
                    tracing::debug!("no answer from {}: {e}; retrying", self.url);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("no answer from {}", self.url)),
            };
            self.answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let status = response.status();
            if status == StatusCode::SERVICE_UNAVAILABLE && retry {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            return Ok((status, response.json().await.unwrap_or(Value::Null)));
        }
    }

    /// A JSON answer with its status (2xx); a 4xx or 5xx is an error carrying the server's
    /// message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let body = body.map(|b| bytes::Bytes::from(b.to_string()));
        let (status, answer) = self.request(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("{method} {path}: {}", refusal(status, &answer));
        }
        Ok((status, answer))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.send(Method::GET, path, None).await?.1)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self.send(Method::POST, path, Some(body)).await?.1)
    }

    /// POSTs `body` to `path`; while the server answers that unit models train first, waits
    /// for their jobs and asks again.
    pub async fn create(&self, path: &str, body: Value) -> Result<Value> {
        loop {
            let answer = self.post(path, &body).await?;
            let Some(training) = answer["training"].as_array() else {
                return Ok(answer);
            };
            self.wait_for_training(training).await?;
        }
    }

    /// Waits for the jobs of a `training` answer (`[{partition, model, job}]`) to succeed.
    pub async fn wait_for_training(&self, training: &[Value]) -> Result<()> {
        let jobs: Vec<&str> = training.iter().filter_map(|t| t["job"].as_str()).collect();
        let mut progress = Progress::new("training unit models");
        loop {
            let mut done = 0;
            for id in &jobs {
                let job = self.get(&format!("/v1/jobs/{id}")).await?;
                match job["state"].as_str() {
                    Some("succeeded") => done += 1,
                    Some(state @ ("failed" | "cancelled")) => {
                        progress.finish();
                        bail!("training job {id} {state}: {}", job["error"]);
                    }
                    _ => {}
                }
            }
            progress.set(done, jobs.len() as u64);
            if done == jobs.len() as u64 {
                progress.finish();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Progress on stderr: a bar on a terminal, otherwise a line every ten seconds.
pub struct Progress {
    bar: Option<ProgressBar>,
    said: Instant,
    what: String,
}

impl Progress {
    pub fn new(what: impl Into<String>) -> Progress {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left)")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what.clone());
            bar
        });
        Progress {
            bar,
            said: Instant::now(),
            what,
        }
    }

    pub fn set(&mut self, done: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None if self.said.elapsed() >= Duration::from_secs(10) || done == total => {
                eprintln!("{}: {done}/{total}", self.what);
                self.said = Instant::now();
            }
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `404 Not Found: partition "x" not found`: a refused request, as the server put it.
pub fn refusal(status: StatusCode, answer: &Value) -> String {
    let message = answer["error"]["message"].as_str().unwrap_or("no message");
    format!("{status}: {message}")
}

/// An HTTP client that sends `token`, if any, with every request.
pub fn http_client(token: Option<&str>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        let mut bearer = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
            .context("the token holds characters a token never has")?;
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// A float with four decimals, or a dash.
pub fn number(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.4}"))
}

/// A table in the house style.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(header);
    table
}
