//! Searches whose worker is killed: another worker finishes them with the points an undisturbed
//! run evaluates.

use super::*;

#[tokio::test]
async fn a_search_whose_worker_is_killed_is_finished_by_another_with_the_same_points() {
    let app = killable_pool().await;
    let request =
        json!({"partitions": PARTITIONS, "eval_sets": ["legal"], "budget": 16, "seed": 2});
    let (status, created) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let stored = killed_after(&app, 5, "the worker evaluated nothing").await;
    assert!(stored < 17, "the worker finished before it could be killed");

    let survivor = App::start(app.worker("survivor"));
    let search = finished(&app, &id).await;
    survivor.abort();
    let points = search["points"].as_array().unwrap();
    assert_eq!(
        points.len(),
        19,
        "16 samples, the proposal, natural and uniform"
    );
    let (_, job) = app
        .get(&format!("/v1/jobs/{}", search["job"].as_str().unwrap()))
        .await;
    assert_eq!(
        (job["attempts"].as_i64(), job["result"]["worker"].as_str()),
        (Some(2), Some("survivor"))
    );
    assert_eq!(
        job["result"]["computed"].as_i64().unwrap(),
        19 - stored - repeats(points),
        "{job}"
    );
    let scores: i64 =
        sqlx::query_scalar("select count(*) from scores where weighting = 'explicit'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(scores, 19 - repeats(points), "no point was evaluated twice");

    // The points are those an undisturbed search proposes: the same request, run whole.
    let survivor = App::start(app.worker("survivor"));
    let (status, again) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_ne!(again["id"].as_str(), Some(id.as_str()));
    let again = finished(&app, again["id"].as_str().unwrap()).await;
    survivor.abort();
    let undisturbed = again["points"].as_array().unwrap();
    assert_eq!(undisturbed.len(), 19);
    for (point, expected) in points.iter().zip(undisturbed) {
        for (got, want) in weights(point).iter().zip(weights(expected)) {
            assert!(
                (got - want).abs() < 1e-9,
                "point {}: {:?} against {:?}",
                point["position"],
                weights(point),
                weights(expected)
            );
        }
    }
}

#[tokio::test]
async fn a_gradient_search_whose_worker_is_killed_continues_from_its_last_stored_step() {
    let app = killable_pool().await;
    let request = json!({"partitions": PARTITIONS, "eval_sets": ["legal"], "budget": 12, "method": "gradient"});
    let (status, created) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    let stored = killed_after(&app, 4, "the worker stored no step").await;
    assert!(stored < 13, "the worker finished before it could be killed");
    let total = 13 + 2; // the steps, then the natural and uniform mixtures

    let survivor = App::start(app.worker("survivor"));
    let search = finished(&app, &id).await;
    let points = search["points"].as_array().unwrap();
    let positions: Vec<u64> = points
        .iter()
        .map(|p| p["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (0..total).collect::<Vec<_>>(),
        "no step lost or repeated"
    );
    let (_, job) = app
        .get(&format!("/v1/jobs/{}", search["job"].as_str().unwrap()))
        .await;
    assert_eq!(job["result"]["worker"], "survivor");
    assert_eq!(
        job["result"]["computed"].as_i64().unwrap(),
        total as i64 - stored - repeats(points),
        "{job}"
    );
    // Its last stored step was taken again (its gradient was not kept), nothing before it;
    // each reference mixture takes one pass for its tune objective.
    assert_eq!(
        job["result"]["gradient_passes"].as_i64().unwrap(),
        13 - stored + 1 + 2,
        "{job}"
    );

    // The steps are those an undisturbed search takes: the same request, run whole.
    let (status, again) = app.post("/v1/searches", request.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let again = finished(&app, again["id"].as_str().unwrap()).await;
    survivor.abort();
    for (a, b) in points.iter().zip(again["points"].as_array().unwrap()) {
        for (x, y) in weights(a).iter().zip(weights(b)) {
            assert!(
                (x - y).abs() < 1e-9,
                "step {}: {a} against {b}",
                a["position"]
            );
        }
    }
    assert_eq!(
        search["proposal"]["position"],
        again["proposal"]["position"]
    );
}

/// Points whose mixture an earlier point of the search already scored (a reference mixture
/// equal to one the search visited): nothing to compute for them.
fn repeats(points: &[Value]) -> i64 {
    let key = |p: &Value| -> Vec<String> {
        let w = weights(p);
        let sum: f64 = w.iter().sum();
        w.iter().map(|x| format!("{:.12e}", x / sum)).collect()
    };
    (0..points.len())
        .filter(|&i| points[..i].iter().any(|q| key(q) == key(&points[i])))
        .count() as i64
}

/// A pool of the three partitions' trained unit models and a `legal` eval set, with no
/// worker left running.
async fn killable_pool() -> App {
    let app = crate::app::spawn_app_with(Default::default()).await;
    let trainer = App::start(app.worker("trainer"));
    for name in PARTITIONS {
        let (status, body) = app
            .post(&format!("/v1/partitions?name={name}"), corpus(name, 0, 25))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = app
        .post("/v1/eval-sets?name=legal", corpus("legal_licenses", 40, 8))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for name in PARTITIONS {
        app.trained(name).await;
    }
    trainer.abort();
    app
}

/// Runs a worker process with a 3-second lease and SIGKILLs it once `points` search points
/// are stored; returns how many were stored then.
async fn killed_after(app: &App, points: i64, nothing: &str) -> i64 {
    let mut child = crate::helpers::worker_process(
        &app.database_url().await,
        &format!("file://{}", app._dirs.0.path().display()),
        &app._dirs.1.path().join("process"),
        "search",
        3,
    );
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from search_points")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let started = std::time::Instant::now();
    while count().await < points {
        assert!(started.elapsed() < Duration::from_secs(120), "{nothing}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    count().await
}
