//! The dashboard in real headless Chromium, on a service seeded with the `tiny` preset: every
//! page loads without console errors (at 1280 px and at a phone's 390 px), the explorer shows
//! the perplexity `GET /v1/score` answers, a running job's bar advances on its events, the
//! leaderboard sorts, the heatmap has one cell per pair, and the loss curve one point per
//! recorded step. A second test times every page on a registry of 1,000 partitions.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::watch;

use crate::app::{App, corpus, spawn_app_with};
use crate::chrome::Browser;

mod scale;

const DOMAINS: [&str; 3] = ["legal_licenses", "tech_docs", "code_python"];

/// A served pool: the `tiny` base and a quick recipe (the defaults), three partitions of the
/// corpus with trained unit models, an eval set, every single and pair scored by a sweep, and
/// one validation. A real worker loop runs the jobs (and reports itself).
async fn seeded() -> (App, watch::Sender<bool>) {
    let app = spawn_app_with(Default::default()).await;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(app.worker("dashboard-worker").run(stopped));
    let (status, base) = app
        .post(
            "/v1/bases",
            json!({"name": "tiny", "preset": "tiny", "seed": 3}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{base}");
    let (status, recipe) = app
        .post(
            "/v1/recipes",
            json!({"name": "quick", "tokens": 2048, "batch_tokens": 256, "micro_batch": 4, "seq_len": 64, "schedule": "constant", "lr": 0.003}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recipe}");
    for domain in DOMAINS {
        let (status, body) = app
            .post(
                &format!("/v1/partitions?name={domain}&domain={domain}"),
                corpus(domain, 0, 40),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let held_out: String = DOMAINS.iter().map(|d| corpus(d, 40, 6)).collect();
    let (status, body) = app.post("/v1/eval-sets?name=held-out", held_out).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for domain in DOMAINS {
        app.trained(domain).await;
    }
    let (status, sweep) = app
        .post(
            "/v1/sweeps",
            json!({"partitions": DOMAINS, "sizes": [1, 2], "eval_sets": ["held-out"]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sweep}");
    let (status, validation) = app
        .post(
            "/v1/validations",
            json!({"mixture": ["legal_licenses", "tech_docs"], "eval_sets": ["held-out"]})
                .to_string(),
        )
        .await;
    assert!(status.is_success(), "{validation}");
    let (status, search) = app
        .post(
            "/v1/searches",
            json!({"partitions": DOMAINS, "eval_sets": ["held-out"], "budget": 6}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{search}");
    let sweep_id = sweep["id"].as_str().unwrap().to_string();
    // Done when the sweep is, and no job (the validation's proxies) is left.
    // One worker runs them in turn; a loaded machine takes minutes.
    for _ in 0..3000 {
        let (_, s) = app.get(&format!("/v1/sweeps/{sweep_id}")).await;
        let (_, running) = app.get("/v1/jobs?state=running").await;
        let (_, queued) = app.get("/v1/jobs?state=queued").await;
        let idle = running["items"] == json!([]) && queued["items"] == json!([]);
        if s["state"] == "succeeded" && idle {
            return (app, stop);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, jobs) = app.get("/v1/jobs?limit=50").await;
    panic!("the sweep or the validation did not finish in five minutes: {jobs}");
}

/// The uniform score of a mixture as the API answers it.
async fn api_perplexity(app: &App, partitions: &str) -> f64 {
    let (status, score) = app
        .get(&format!(
            "/v1/score?partitions={partitions}&eval=held-out&wait=60"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{score}");
    score["perplexity"].as_f64().unwrap()
}

#[tokio::test]
async fn the_dashboard_shows_in_a_real_browser_what_the_api_answers() {
    let (app, stop) = seeded().await;
    let browser = Browser::start(1280, 900).await;
    let (_, model) = app.get("/v1/partitions/legal_licenses").await;
    let model_id = model["models"][0]["id"].as_str().unwrap().to_string();
    let (_, sweeps) = app.get("/v1/sweeps").await;
    let sweep_id = sweeps["items"][0]["id"].as_str().unwrap().to_string();
    let (_, searches) = app.get("/v1/searches").await;
    let search_id = searches["items"][0]["id"].as_str().unwrap().to_string();

    // Every page, with a screenshot of each.
    let pages = [
        ("overview", "/".to_string()),
        ("partitions", "/partitions".into()),
        ("partition", "/partitions/legal_licenses".into()),
        ("model", format!("/models/{model_id}")),
        ("jobs", "/jobs".into()),
        ("explorer", "/explorer".into()),
        ("leaderboard", "/leaderboard".into()),
        ("heatmap", "/heatmap".into()),
        ("sweeps", "/sweeps".into()),
        ("sweep", format!("/sweeps/{sweep_id}")),
        ("searches", "/searches".into()),
        ("search", format!("/searches/{search_id}")),
        ("validations", "/validations".into()),
    ];
    for (name, path) in &pages {
        browser.open(&app.url(path)).await;
        // Charts draw on the next frame.
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser.screenshot(name).await;
        assert_eq!(
            browser.console_errors().await,
            Vec::<String>::new(),
            "{path}"
        );
    }

    // The overview counts what the registry holds, and lists the worker with its device.
    browser.open(&app.url("/")).await;
    let counts = browser.css("#counts").await.text().await.unwrap();
    assert!(counts.contains("3\npartitions"), "{counts}");
    let workers = browser.css("#workers").await.text().await.unwrap();
    assert!(
        workers.contains("dashboard-worker") && workers.contains("cpu"),
        "{workers}"
    );

    // The partitions table: every partition, a search that keeps one, a domain filter.
    browser.open(&app.url("/partitions")).await;
    let rows = browser
        .js("return document.querySelectorAll('#partitions tbody tr').length")
        .await;
    assert_eq!(rows, 3);
    browser
        .css("#search")
        .await
        .send_keys("tech_d")
        .await
        .unwrap();
    wait_for(&browser, "return document.querySelectorAll('#partitions tbody tr').length === 1 && document.body.dataset.state === 'ready'").await;
    let text = browser.css("#partitions tbody").await.text().await.unwrap();
    assert!(text.starts_with("tech_docs"), "{text}");

    // The loss curve has one point per recorded step, the same the API lists.
    let (_, detail) = app.get(&format!("/v1/models/{model_id}")).await;
    let recorded = detail["loss"].as_array().unwrap().len();
    assert_eq!(
        recorded, 8,
        "every step of an 8-step training is recorded: {detail}"
    );
    browser.open(&app.url(&format!("/models/{model_id}"))).await;
    let points = browser
        .js("return echarts.getInstanceByDom(document.getElementById('loss-chart')).getOption().series[0].data.length")
        .await;
    assert_eq!(points, json!(recorded));

    // A search's chart has a point per evaluated point: the budget's samples and the proposal.
    browser
        .open(&app.url(&format!("/searches/{search_id}")))
        .await;
    let plotted = browser
        .js("const o = echarts.getInstanceByDom(document.getElementById('search-chart')).getOption(); return o.series[0].data.length + o.series[1].data.length")
        .await;
    let (_, search) = app.get(&format!("/v1/searches/{search_id}")).await;
    let own = search["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "sample" || p["role"] == "proposal")
        .count();
    assert_eq!(plotted, json!(own));
    assert_eq!(plotted, json!(7));
    // The natural and uniform mixtures are drawn apart, one point each.
    let references = browser
        .js("return echarts.getInstanceByDom(document.getElementById('search-chart')).getOption().series.slice(3).map(s => [s.name, s.data.length])")
        .await;
    assert_eq!(references, json!([["natural", 1], ["uniform", 1]]));

    // The explorer: two partitions picked by their checkboxes show what GET /v1/score says,
    // from the cache for a pair the sweep scored; weights 3:1 make a mixture nothing scored
    // yet, which the page waits for (the score's job) before it shows it.
    browser.open(&app.url("/explorer")).await;
    browser
        .css("input[data-partition=legal_licenses]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .css("input[data-partition=code_python]")
        .await
        .click()
        .await
        .unwrap();
    browser.css("#score").await.click().await.unwrap();
    let shown = browser.attr("#perplexity", "data-value").await.unwrap();
    let cached = browser.attr("#cached", "data-cached").await;
    assert_eq!(
        shown.parse::<f64>().unwrap(),
        api_perplexity(&app, "legal_licenses,code_python").await
    );
    assert_eq!(
        cached.as_deref(),
        Some("true"),
        "the sweep scored this pair"
    );
    browser.open(&app.url("/explorer")).await;
    browser
        .css("#weighting")
        .await
        .select_by_value("explicit")
        .await
        .unwrap();
    for (partition, weight) in [("legal_licenses", "3"), ("tech_docs", "1")] {
        let input = browser
            .css(&format!("input[data-weight={partition}]"))
            .await;
        input.clear().await.unwrap();
        input.send_keys(weight).await.unwrap();
        browser
            .css(&format!("input[data-partition={partition}]"))
            .await
            .click()
            .await
            .unwrap();
    }
    browser.css("#score").await.click().await.unwrap();
    let shown = browser.attr("#perplexity", "data-value").await.unwrap();
    let cached = browser.attr("#cached", "data-cached").await;
    let (status, weighted) = app
        .get("/v1/score?partitions=legal_licenses,tech_docs&weights=3,1&eval=held-out")
        .await;
    assert_eq!(status, StatusCode::OK, "{weighted}");
    assert_eq!(
        shown.parse::<f64>().unwrap(),
        weighted["perplexity"].as_f64().unwrap()
    );
    assert_eq!(cached.as_deref(), Some("false"), "computed for the page");
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.screenshot("explorer").await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());

    // The leaderboard sorts by perplexity both ways when its header is clicked.
    browser.open(&app.url("/leaderboard")).await;
    let column = "return [...document.querySelectorAll('#leaderboard tbody span[data-value]')].map(e => Number(e.dataset.value))";
    let ascending: Vec<f64> = serde_json::from_value(browser.js(column).await).unwrap();
    let (_, board) = app.get("/v1/leaderboard?eval=held-out").await;
    assert_eq!(ascending.len() as i64, board["total"].as_i64().unwrap());
    assert!(
        ascending.len() > 8,
        "the sweep's six, the validation's token-weighted proxy, the explorer's 3:1 and the search's points"
    );
    assert!(ascending.is_sorted(), "{ascending:?}");
    browser
        .css("th[data-sort=perplexity]")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&browser, "return document.querySelector('th[data-sort=perplexity]').dataset.order === 'desc' && document.body.dataset.state === 'ready'").await;
    let descending: Vec<f64> = serde_json::from_value(browser.js(column).await).unwrap();
    assert_eq!(
        descending,
        ascending.iter().rev().copied().collect::<Vec<_>>()
    );

    // The heatmap has one cell per pair of the three partitions, with the API's values.
    browser.open(&app.url("/heatmap")).await;
    let cells: Vec<(usize, usize, f64)> = serde_json::from_value(
        browser
            .js("return echarts.getInstanceByDom(document.getElementById('heatmap-chart')).getOption().series[0].data")
            .await,
    )
    .unwrap();
    assert_eq!(cells.len(), 6, "3 singles and 3 pairs: {cells:?}");
    let (_, map) = app.get("/v1/heatmap?eval=held-out").await;
    let names: Vec<String> = serde_json::from_value(map["partitions"].clone()).unwrap();
    for (column, row, ppl) in cells {
        let mixture = if row == column {
            names[row].clone()
        } else {
            format!("{},{}", names[row], names[column])
        };
        assert_eq!(ppl, api_perplexity(&app, &mixture).await, "{mixture}");
    }

    // A running job's bar advances on its events, without reloading; Cancel (with the
    // token given on the page) stops it.
    let (status, long) = app
        .post(
            "/v1/recipes",
            json!({"name": "long", "tokens": 512_000, "batch_tokens": 256, "micro_batch": 4, "seq_len": 64}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{long}");
    let (status, queued) = app
        .post(
            "/v1/models",
            json!({"recipe": "long", "partitions": ["legal_licenses"]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let job = queued["models"][0]["model"]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = std::time::Instant::now();
    loop {
        let (_, running) = app.get(&format!("/v1/jobs/{job}")).await;
        if running["progress"].as_f64() > Some(0.0) {
            break;
        }
        assert!(
            running["state"] != "failed" && started.elapsed() < Duration::from_secs(120),
            "the training made no progress: {running}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.open(&app.url("/jobs")).await;
    browser
        .css("details.token summary")
        .await
        .click()
        .await
        .unwrap();
    browser
        .css("#token")
        .await
        .send_keys(&app.token)
        .await
        .unwrap();
    browser
        .css("#token-form button")
        .await
        .click()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    browser.until_ready("/jobs with a token").await;
    browser.js("window.notReloaded = true").await;
    let bar = format!("[data-job=\"{job}\"]");
    let first: f64 = browser
        .css(&bar)
        .await
        .attr("aria-valuenow")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    wait_for(
        &browser,
        &format!(
            "return Number(document.querySelector('{}').getAttribute('aria-valuenow')) > {first}",
            bar.replace('\'', "\\'")
        ),
    )
    .await;
    assert_eq!(
        browser.js("return window.notReloaded === true").await,
        json!(true)
    );
    browser
        .css(&format!("[data-cancel=\"{job}\"]"))
        .await
        .click()
        .await
        .unwrap();
    for _ in 0..600 {
        if app.get(&format!("/v1/jobs/{job}")).await.1["state"] == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.get(&format!("/v1/jobs/{job}")).await.1["state"],
        "cancelled"
    );
    wait_for(
        &browser,
        &format!(
            "return document.querySelector('[data-job-state=\"{job}\"]').innerText === 'cancelled'"
        ),
    )
    .await;
    // A gradient search's page (last: its halves are eval sets the pages above would list)
    // shows its steps with their tune objective, best on the tune
    // halves first, and draws the tune objective beside the report halves' objective.
    let (status, gradient) = app
        .post(
            "/v1/searches",
            json!({"partitions": DOMAINS, "eval_sets": ["held-out"], "budget": 3, "method": "gradient", "recipe": "quick"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gradient}");
    let gradient_id = gradient["id"].as_str().unwrap().to_string();
    let gradient = loop {
        let (_, s) = app.get(&format!("/v1/searches/{gradient_id}")).await;
        if s["state"] == "succeeded" {
            break s;
        }
        assert!(s["state"] != "failed", "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    browser
        .open(&app.url(&format!("/searches/{gradient_id}")))
        .await;
    let series = browser
        .js("return echarts.getInstanceByDom(document.getElementById('search-chart')).getOption().series.map(s => [s.name, s.data.length])")
        .await;
    assert_eq!(
        series,
        json!([
            ["tune objective", 4],
            ["objective (report halves)", 4],
            ["natural", 1],
            ["uniform", 1]
        ])
    );
    let tuned: Vec<f64> = serde_json::from_value(
        browser
            .js("const c = [...document.querySelectorAll('#points th')].findIndex(th => th.textContent === 'Tune objective'); return [...document.querySelectorAll('#points tbody tr')].map(tr => Number(tr.children[c].textContent))")
            .await,
    )
    .unwrap();
    assert_eq!(tuned.len(), 6, "four steps, natural and uniform");
    assert!(tuned.is_sorted(), "{tuned:?}");
    let answered = gradient["answer"]["tune_objective"].as_f64().unwrap();
    assert!((tuned[0] - answered).abs() < 5e-4, "{tuned:?} {answered}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.screenshot("search-gradient").await;

    // The `long` recipe is the newest since the cancelled training above, so the healing pass
    // (every minute) has queued its unit models for the other partitions, 2,000 steps each;
    // cancel them, so that the score below does not wait behind them (one queued later
    // comes after it).
    for state in ["running", "queued"] {
        let (_, trains) = app.get(&format!("/v1/jobs?kind=train&state={state}")).await;
        for train in trains["items"].as_array().unwrap() {
            let id = train["id"].as_str().unwrap();
            app.post(&format!("/v1/jobs/{id}/cancel"), String::new())
                .await;
        }
    }
    // A set of questions: the explorer shows a mixture's accuracy as the API answers it,
    // with a row per task, and the leaderboard ranks by accuracy, best first.
    let quiz = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/choices/piqa.jsonl"),
    )
    .unwrap();
    let (status, body) = app.post("/v1/eval-sets?name=quiz&kind=choices", quiz).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    browser
        .open(&app.url("/explorer?eval=quiz&recipe=quick"))
        .await;
    for partition in ["legal_licenses", "code_python"] {
        browser
            .css(&format!("input[data-partition={partition}]"))
            .await
            .click()
            .await
            .unwrap();
    }
    browser.css("#score").await.click().await.unwrap();
    let mut text = json!(null);
    for _ in 0..600 {
        text = browser
            .js("const a = document.querySelector('#accuracy'); return a ? null : document.querySelector('#result').innerText")
            .await;
        if text.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !text.is_null() {
        let (_, jobs) = app.get("/v1/jobs?limit=5").await;
        panic!("the explorer shows no accuracy: {text}; the latest jobs: {jobs}");
    }
    let shown = browser.attr("#accuracy", "data-value").await.unwrap();
    let (status, answer) = app
        .get("/v1/score?partitions=legal_licenses,code_python&eval=quiz&recipe=quick")
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        shown.parse::<f64>().unwrap(),
        answer["accuracy"].as_f64().unwrap()
    );
    let rows = browser
        .js("return document.querySelectorAll('#per-task tbody tr').length")
        .await;
    assert_eq!(rows, json!(1));
    browser
        .open(&app.url("/leaderboard?eval=quiz&recipe=quick"))
        .await;
    browser
        .css("th[data-sort=accuracy]")
        .await
        .click()
        .await
        .unwrap();
    wait_for(
        &browser,
        "return document.querySelector('th[data-sort=accuracy]').dataset.order === 'desc'",
    )
    .await;

    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;

    // A phone-width screen: every page still loads without errors.
    let phone = Browser::start(390, 844).await;
    for (name, path) in &pages {
        phone.open(&app.url(path)).await;
        if *name == "explorer" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            phone.screenshot("explorer-phone").await;
        }
        assert_eq!(
            phone.console_errors().await,
            Vec::<String>::new(),
            "{path} at 390 px"
        );
    }
    // The capture those checks rely on: an error planted in the page is seen, once.
    phone
        .js("setTimeout(() => { throw new Error('planted by the test') }, 0); return null")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errors = phone.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("planted by the test")),
        "{errors:?}"
    );
    assert_eq!(phone.console_errors().await, Vec::<String>::new());
    phone.close().await;
    let _ = stop.send(true);
}

/// Polls a script until it returns true (up to a minute).
async fn wait_for(browser: &Browser, script: &str) {
    for _ in 0..1200 {
        if browser.js(script).await == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still false after a minute: {script}");
}
