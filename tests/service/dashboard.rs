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
    for _ in 0..1200 {
        let (_, s) = app.get(&format!("/v1/sweeps/{sweep_id}")).await;
        let (_, running) = app.get("/v1/jobs?state=running").await;
        let (_, queued) = app.get("/v1/jobs?state=queued").await;
        let idle = running["items"] == json!([]) && queued["items"] == json!([]);
        if s["state"] == "succeeded" && idle {
            return (app, stop);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sweep or the validation did not finish in two minutes");
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
    assert_eq!(plotted, json!(search["points"].as_array().unwrap().len()));
    assert_eq!(plotted, json!(7));

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
        json!([["tune objective", 4], ["objective (report halves)", 4]])
    );
    let tuned: Vec<f64> = serde_json::from_value(
        browser
            .js("const c = [...document.querySelectorAll('#points th')].findIndex(th => th.textContent === 'Tune objective'); return [...document.querySelectorAll('#points tbody tr')].map(tr => Number(tr.children[c].textContent))")
            .await,
    )
    .unwrap();
    assert_eq!(tuned.len(), 4);
    assert!(tuned.is_sorted(), "{tuned:?}");
    let proposed = gradient["proposal"]["tune_objective"].as_f64().unwrap();
    assert!((tuned[0] - proposed).abs() < 5e-4, "{tuned:?} {proposed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.screenshot("search-gradient").await;

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

/// Writes a big pool straight into the registry: 1,000 partitions in 8 domains, 2,000 unit
/// models (two recipes) with their succeeded training jobs (one with a 500-point loss
/// series), and 10,000 scores on one eval set: every single and pair of the first 100
/// partitions by name (5,050) and 4,950 triples.
async fn big_registry(app: &App) {
    use mixpool::mixture::{Mixture, Weighting};
    use uuid::Uuid;
    let pool = &app.pool;
    let base: Uuid = sqlx::query_scalar("select id from bases where name = 'base'")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut db = pool.acquire().await.unwrap();
    let second = mixpool::engine::train::TrainConfig {
        seed: 2,
        ..Default::default()
    };
    mixpool::registry::recipes::insert(&mut db, "unit-b", &second)
        .await
        .unwrap();
    drop(db);
    sqlx::query(
        "insert into partitions (id, name, domain, sha256, object_sha256, bytes, documents, created_at)
         select gen_random_uuid(), 'p' || lpad(i::text, 4, '0'),
                (array['fiction','religion','drama','legal','speeches','python','c','docs'])[1 + i % 8],
                md5(i::text) || md5('x' || i), md5('o' || i), 1000 + i * 37, 10 + i % 50,
                now() - make_interval(secs => 1000 - i)
         from generate_series(0, 999) i",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "with made as (
             select gen_random_uuid() as model, gen_random_uuid() as job, r.id as recipe, p.id as partition
             from partitions p cross join recipes r),
         jobs as (
             insert into jobs (id, kind, payload, state, attempts, progress, message, loss, result, started_at, finished_at)
             select job, 'train', jsonb_build_object('model', model), 'succeeded', 1, 1, 'step 50/50', 2.5,
                    jsonb_build_object('model', model, 'data_tokens', 12345,
                        'train', jsonb_build_object('steps', 50, 'tokens', 204800, 'resumed_at', 0,
                            'final_loss', 2.5, 'seconds', 10.0, 'tokens_per_sec', 20480.0)),
                    now() - interval '1 hour', now() - interval '59 minutes'
             from made returning id)
         insert into models (id, base_id, recipe_id, partition_id, state, job_id, weights_sha256)
         select model, $1, recipe, partition, 'ready', job, md5(model::text) from made",
    )
    .bind(base)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into job_losses (job_id, step, loss)
         select (select job_id from models order by created_at, id limit 1), s, 5.0 / (1 + s / 50.0)
         from generate_series(1, 500) s",
    )
    .execute(pool)
    .await
    .unwrap();
    let eval: Uuid = Uuid::new_v4();
    sqlx::query(
        "insert into eval_sets (id, name, sha256, object_sha256, bytes, documents)
         values ($1, 'held-out', 'e', 'e', 40000, 52)",
    )
    .bind(eval)
    .execute(pool)
    .await
    .unwrap();
    // The newest recipe is the default the pages show.
    let unit: Uuid = sqlx::query_scalar("select id from recipes where name = 'unit-b'")
        .fetch_one(pool)
        .await
        .unwrap();
    let first: Vec<Uuid> = sqlx::query_scalar("select id from partitions order by name limit 100")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut mixtures: Vec<Vec<Uuid>> = Vec::new();
    for i in 0..100 {
        for j in 0..=i {
            mixtures.push(if i == j {
                vec![first[i]]
            } else {
                vec![first[i], first[j]]
            });
        }
    }
    'triples: for i in 0..100 {
        for j in 0..i {
            for k in 0..j {
                if mixtures.len() == 10_000 {
                    break 'triples;
                }
                mixtures.push(vec![first[i], first[j], first[k]]);
            }
        }
    }
    let eval_config = mixpool::engine::eval::EvalConfig::default();
    let sha = mixpool::registry::scores::eval_config_sha256(&eval_config);
    let (mut keys, mut members, mut results) = (Vec::new(), Vec::new(), Vec::new());
    for (n, ids) in mixtures.iter().enumerate() {
        let mixture = Mixture::new(ids, None, Weighting::Uniform).unwrap();
        keys.push(mixture.key());
        members.push(serde_json::to_value(&mixture.members).unwrap());
        let ppl = 8.0 + (n % 997) as f64 / 300.0;
        results.push(
            json!({"perplexity": ppl, "bits_per_byte": ppl.ln() / 2f64.ln() / 1.1,
            "macro_perplexity": ppl, "tokens": 40000, "bytes": 40000, "per_domain": {}}),
        );
    }
    sqlx::query(
        "insert into scores (id, base_id, recipe_id, mixture_key, mixture, weighting, merge_method,
                             eval_set_id, eval_config, eval_config_sha256, result)
         select gen_random_uuid(), $1, $2, k, m, 'uniform', 'average', $3, $4, $5, r
         from unnest($6::text[], $7::jsonb[], $8::jsonb[]) as t(k, m, r)",
    )
    .bind(base)
    .bind(unit)
    .bind(eval)
    .bind(serde_json::to_value(&eval_config).unwrap())
    .bind(&sha)
    .bind(&keys)
    .bind(&members)
    .bind(&results)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn every_page_renders_in_the_browser_on_a_pool_of_a_thousand_partitions() {
    let app = spawn_app_with(Default::default()).await;
    big_registry(&app).await;
    let model: uuid::Uuid =
        sqlx::query_scalar("select id from models order by created_at, id limit 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let browser = Browser::start(1280, 900).await;
    let pages = [
        ("overview", "/".to_string()),
        ("partitions", "/partitions".into()),
        (
            "partitions, one domain",
            "/partitions?domain=religion".into(),
        ),
        ("partition", "/partitions/p0500".into()),
        ("unit model (500 loss points)", format!("/models/{model}")),
        ("jobs", "/jobs".into()),
        ("explorer", "/explorer".into()),
        ("leaderboard", "/leaderboard?eval=held-out".into()),
        (
            "heatmap, 100 partitions",
            "/heatmap?eval=held-out&limit=100".into(),
        ),
        ("sweeps", "/sweeps".into()),
        ("validations", "/validations".into()),
    ];
    // The first load also fetches the page's assets; the times are of a second load, as a
    // visitor browsing the dashboard sees them.
    println!(
        "\ndashboard pages on 1,000 partitions, 2,000 unit models, 10,000 scores (headless Chromium, 1280 px):"
    );
    for (name, path) in &pages {
        browser.open(&app.url(path)).await;
        let took = browser.open(&app.url(path)).await;
        println!("  {name:<32} {:>6.0} ms", took.as_secs_f64() * 1000.0);
        assert_eq!(
            browser.console_errors().await,
            Vec::<String>::new(),
            "{path}"
        );
    }
    browser.open(&app.url("/partitions")).await;
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#partitions tbody tr').length")
            .await,
        json!(50),
        "the table shows one page"
    );
    browser.css("#next").await.click().await.unwrap();
    wait_for(&browser, "return document.body.dataset.state === 'ready' && document.querySelector('#partitions tbody tr td').innerText === 'p0949'").await;
    browser.open(&app.url("/leaderboard?eval=held-out")).await;
    let total = browser.css("main p.muted").await.text().await.unwrap();
    assert!(total.starts_with("10,000 scored mixtures"), "{total}");
    browser
        .open(&app.url("/heatmap?eval=held-out&limit=100"))
        .await;
    let cells = browser
        .js("return echarts.getInstanceByDom(document.getElementById('heatmap-chart')).getOption().series[0].data.length")
        .await;
    assert_eq!(cells, json!(5050), "one cell per pair of 100 partitions");
    browser.open(&app.url(&format!("/models/{model}"))).await;
    let points = browser
        .js("return echarts.getInstanceByDom(document.getElementById('loss-chart')).getOption().series[0].data.length")
        .await;
    assert_eq!(points, json!(500));
    browser.close().await;
}
