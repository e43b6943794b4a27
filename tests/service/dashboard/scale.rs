//! The dashboard on a registry of 1,000 partitions: every page renders in the browser, timed.

use super::*;

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
