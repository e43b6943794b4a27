//! `mixpool serve` stopped by SIGTERM while clients are connected: an event stream gets a
//! last `shutdown` event at once, a request that never ends is cut at the deadline, and the
//! process exits 0.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mixpool::api::SweepLimits;

use crate::app::{corpus, spawn_app_with};
use crate::helpers::Server;

#[tokio::test]
async fn serve_ends_event_streams_and_exits_within_its_deadline_on_sigterm() {
    // The app's database holds a base and a recipe; no worker runs, so the unit model's
    // training job stays queued and its event stream stays open.
    let app = spawn_app_with(SweepLimits::default()).await;
    let (status, body) = app
        .post("/v1/partitions?name=python", corpus("code_python", 0, 20))
        .await;
    assert_eq!(status, 201, "{body}");
    let job = body["models"][0]["job_id"].as_str().unwrap().to_string();

    let data = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL".to_string(), app.database_url().await),
        ("MIXPOOL_SHUTDOWN_SECONDS".to_string(), "3".to_string()),
    ];
    let mut server = Server::start(data.path(), &env).await;
    let url = server.url.clone();
    let client = app.client.clone();

    // An event stream following the queued job, its first event read.
    let events = client
        .get(format!("{url}/v1/jobs/{job}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut events = events.bytes_stream();
    let first = String::from_utf8(events.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.starts_with("event: job"), "{first}");
    // An upload whose body never ends: only the deadline closes its connection.
    let (stall, stalled) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    stall
        .unbounded_send(Ok(b"{\"text\": \"never fin".to_vec()))
        .unwrap();
    let upload = tokio::spawn(
        client
            .post(format!("{url}/v1/partitions?name=stalled"))
            .body(reqwest::Body::wrap_stream(stalled))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SAFETY: a signal to the child process this test started.
    assert_eq!(
        unsafe { libc::kill(server.process.id() as i32, libc::SIGTERM) },
        0
    );
    let signalled = Instant::now();
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .expect("the event stream ends at once, not at the deadline")
    {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        rest.contains("event: shutdown") && rest.contains(&job),
        "the stream's last event says the server stops: {rest:?}"
    );

    let exited = loop {
        if let Some(status) = server.process.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "serve still runs 10 s after SIGTERM with a 3 s deadline: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = signalled.elapsed();
    assert!(exited.success(), "serve exits 0: {exited}");
    assert!(
        took >= Duration::from_millis(2500),
        "the stalled upload held the server until the deadline, not {took:?}"
    );
    assert!(
        upload.await.unwrap().is_err(),
        "the stalled upload's connection was closed"
    );
    drop(stall);
    // Nothing of the cut upload was registered.
    let (_, partitions) = app.get("/v1/partitions").await;
    let names: Vec<_> = partitions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["python"]);
}
