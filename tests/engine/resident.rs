use std::path::Path;

use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::choices::{self, PreparedChoices};
use mixpool::engine::ensemble::{NllLayout, TokenNll, ensemble, mean_of_units};
use mixpool::engine::eval::{EvalConfig, Evaluation, Prepared, evaluate};
use mixpool::engine::merge::merge_model_dirs;
use mixpool::engine::resident::Workspace;
use tch::{Device, Kind, Tensor};

use crate::helpers::{assert_same_weights, corpus_docs, init, small_gpt2, small_llama, tensors};

/// Three different checkpoints of `config` saved as model directories under `dir`.
fn units(config: &mixpool::engine::model::ModelConfig, dir: &Path) -> Vec<std::path::PathBuf> {
    (0..3)
        .map(|i| {
            let path = dir.join(format!("unit{i}"));
            init(config.clone(), 40 + i).save(&path).unwrap();
            path
        })
        .collect()
}

fn workspace(unit: &Path) -> Workspace {
    Workspace::new(LoadedModel::skeleton(unit, Device::Cpu).unwrap())
}

#[test]
fn a_resident_merge_sets_the_parameters_a_merged_file_holds_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for config in [small_llama(), small_gpt2()] {
        let paths = units(&config, dir.path());
        let mut ws = workspace(&paths[0]);
        let loaded: Vec<_> = paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
                ws.load_unit(&bytes, &p.display().to_string()).unwrap()
            })
            .collect();
        for (members, weights) in [
            (vec![0, 1, 2], vec![1.0, 1.0, 1.0]),
            (vec![2, 0], vec![0.3, 0.7]),
            (vec![1], vec![1.0]),
        ] {
            let inputs: Vec<_> = members.iter().map(|&i| paths[i].clone()).collect();
            let merged = dir.path().join("merged");
            merge_model_dirs(&inputs, &weights, Device::Cpu, &merged).unwrap();
            let from_file = LoadedModel::load(&merged, Device::Cpu).unwrap();
            let chosen: Vec<_> = members.iter().map(|&i| &loaded[i]).collect();
            ws.merge(&chosen, &weights).unwrap();
            assert_same_weights(ws.model(), &from_file);
        }
    }
}

/// A Fisher estimate of `model`'s shapes: `value(name, parameter)` per parameter, as the
/// bytes of a `fisher.safetensors`.
fn fisher_bytes(model: &LoadedModel, value: impl Fn(&str, &Tensor) -> Tensor) -> Vec<u8> {
    let named: Vec<(String, Tensor)> = tensors(model)
        .into_iter()
        .map(|(name, t)| {
            let v = value(&name, &t).to_kind(Kind::Float);
            (name, v)
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    Tensor::write_safetensors(&named, file.path()).unwrap();
    std::fs::read(file.path()).unwrap()
}

#[test]
fn a_fisher_merge_with_equal_estimates_is_the_plain_average_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for config in [small_llama(), small_gpt2()] {
        let paths = units(&config, dir.path());
        let mut ws = workspace(&paths[0]);
        let loaded: Vec<_> = paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
                ws.load_unit(&bytes, &p.display().to_string()).unwrap()
            })
            .collect();
        // Equal estimates with zeros among them (coordinates no training moved).
        let shared = fisher_bytes(ws.model(), |_, t| {
            (t.rand_like() - 0.3).clamp_min(0.0) * 1e-4
        });
        let equal: Vec<_> = (0..3)
            .map(|_| ws.load_fisher(&shared, "equal").unwrap())
            .collect();
        for (members, weights) in [
            (vec![0, 1, 2], vec![1.0, 1.0, 1.0]),
            (vec![2, 0], vec![0.3, 0.7]),
            (vec![0, 1, 2], vec![0.2, 0.5, 0.3]),
            (vec![1], vec![1.0]),
        ] {
            let chosen: Vec<_> = members.iter().map(|&i| &loaded[i]).collect();
            ws.merge(&chosen, &weights).unwrap();
            let plain = tensors(ws.model())
                .into_iter()
                .map(|(n, t)| (n, t.copy()))
                .collect::<Vec<_>>();
            let with: Vec<_> = members.iter().map(|&i| (&loaded[i], &equal[i])).collect();
            ws.merge_fisher(&with, &weights).unwrap();
            for ((name, a), (_, b)) in plain.iter().zip(tensors(ws.model())) {
                assert!(a.equal(&b), "{name} with weights {weights:?}");
            }
        }
        // One unit's estimate far above the other's: each coordinate follows that unit.
        let units_of = |i: usize| LoadedModel::load(&paths[i], Device::Cpu).unwrap();
        let sure = ws
            .load_fisher(&fisher_bytes(ws.model(), |_, t| t.ones_like()), "sure")
            .unwrap();
        let unsure = ws
            .load_fisher(
                &fisher_bytes(ws.model(), |_, t| t.ones_like() * 1e-9),
                "unsure",
            )
            .unwrap();
        ws.merge_fisher(&[(&loaded[0], &unsure), (&loaded[1], &sure)], &[0.5, 0.5])
            .unwrap();
        let target = units_of(1);
        for ((name, merged), (_, want)) in tensors(ws.model()).iter().zip(tensors(&target)) {
            let gap = (merged - &want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]).max(1e-6);
            assert!(gap <= 1e-6 * scale, "{name}: {gap}");
        }
        // An estimate of another model, or no estimate at all, is refused by name.
        let other = if config == small_llama() {
            small_gpt2()
        } else {
            small_llama()
        };
        let stranger = init(other, 1);
        let err = ws
            .load_fisher(&fisher_bytes(&stranger, |_, t| t.ones_like()), "stranger")
            .err()
            .unwrap();
        assert!(err.to_string().contains("stranger"), "{err}");
        assert!(ws.load_fisher(b"not a safetensors file", "junk").is_err());
    }
}

#[test]
fn a_task_vector_merge_scales_the_average_away_from_the_base() {
    let dir = tempfile::tempdir().unwrap();
    for config in [small_llama(), small_gpt2()] {
        let paths = units(&config, dir.path());
        let base_path = dir.path().join("base");
        init(config.clone(), 7).save(&base_path).unwrap();
        let mut ws = workspace(&paths[0]);
        let load = |ws: &mut Workspace, p: &Path| {
            let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
            ws.load_unit(&bytes, &p.display().to_string()).unwrap()
        };
        let base = load(&mut ws, &base_path);
        let loaded: Vec<_> = paths.iter().map(|p| load(&mut ws, p)).collect();
        let snapshot = |ws: &Workspace| -> Vec<(String, Tensor)> {
            tensors(ws.model())
                .into_iter()
                .map(|(n, t)| (n, t.copy()))
                .collect()
        };
        for (members, weights) in [
            (vec![0, 1, 2], vec![1.0, 1.0, 1.0]),
            (vec![2, 0], vec![0.3, 0.7]),
            (vec![1], vec![1.0]),
        ] {
            let chosen: Vec<_> = members.iter().map(|&i| &loaded[i]).collect();
            ws.merge(&chosen, &weights).unwrap();
            let average = snapshot(&ws);
            // λ = 1: the base's coefficient is exactly 0, so the plain average bit for bit.
            ws.merge_task_vectors(&base, &chosen, &weights, 1.0)
                .unwrap();
            for ((name, a), (_, b)) in average.iter().zip(tensors(ws.model())) {
                assert!(a.equal(&b), "{name} with weights {weights:?}");
            }
            // λ = 0: the base itself.
            ws.merge_task_vectors(&base, &chosen, &weights, 0.0)
                .unwrap();
            let from_file = LoadedModel::load(&base_path, Device::Cpu).unwrap();
            assert_same_weights(ws.model(), &from_file);
            // λ = 2.5: base + 2.5 (average − base), computed here in fp64.
            ws.merge_task_vectors(&base, &chosen, &weights, 2.5)
                .unwrap();
            for (((name, avg), (_, b)), (_, got)) in average
                .iter()
                .zip(tensors(&from_file))
                .zip(tensors(ws.model()))
            {
                let (avg, b) = (avg.to_kind(Kind::Double), b.to_kind(Kind::Double));
                let want = &b + (avg - &b) * 2.5;
                let gap = (got.to_kind(Kind::Double) - &want)
                    .abs()
                    .max()
                    .double_value(&[]);
                let scale = want.abs().max().double_value(&[]).max(1e-6);
                assert!(gap <= 1e-6 * scale, "{name}: {gap}");
            }
        }
        let chosen = [&loaded[0]];
        assert!(
            ws.merge_task_vectors(&base, &chosen, &[1.0], f64::NAN)
                .is_err()
        );
        assert!(
            ws.merge_task_vectors(&base, &chosen, &[1.0, 1.0], 1.5)
                .is_err()
        );
    }
}

#[test]
fn bf16_units_merge_resident_as_they_do_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let paths = units(&small_llama(), dir.path());
    for p in &paths {
        let weights = p.join("model.safetensors");
        let halved: Vec<(String, Tensor)> = Tensor::read_safetensors(&weights)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::BFloat16)))
            .collect();
        Tensor::write_safetensors(&halved, &weights).unwrap();
    }
    let mut ws = workspace(&paths[0]);
    let loaded: Vec<_> = paths
        .iter()
        .map(|p| ws.load_unit(&std::fs::read(p.join("model.safetensors")).unwrap(), "u"))
        .collect::<Result<_, _>>()
        .unwrap();
    let merged = dir.path().join("merged");
    merge_model_dirs(&paths, &[1.0, 2.0, 3.0], Device::Cpu, &merged).unwrap();
    ws.merge(&loaded.iter().collect::<Vec<_>>(), &[1.0, 2.0, 3.0])
        .unwrap();
    assert_same_weights(
        ws.model(),
        &LoadedModel::load(&merged, Device::Cpu).unwrap(),
    );
    for (name, t) in tensors(ws.model()) {
        assert_eq!(t.kind(), Kind::Float, "{name}: the model computes in fp32");
        assert!(
            t.equal(&t.to_kind(Kind::BFloat16).to_kind(Kind::Float)),
            "{name}"
        );
    }
}

#[test]
fn a_prepared_eval_set_gives_what_evaluating_the_documents_gives() {
    let dir = tempfile::tempdir().unwrap();
    let paths = units(&small_llama(), dir.path());
    let model = LoadedModel::load(&paths[1], Device::Cpu).unwrap();
    let docs: Vec<_> = corpus_docs("tech_docs").into_iter().take(20).collect();
    let config = EvalConfig::default();
    let prepared = Prepared::new(&model, &docs, &config).unwrap();
    let direct = evaluate(&model, &docs, &config).unwrap();
    assert_eq!(prepared.evaluate(&model, config.batch_size), direct);
    assert_eq!(prepared.tokens(), direct.total.tokens);
}

/// The ensemble proxy's exactness, on real models: the stored per-token NLLs of a model
/// total to its evaluation, and an ensemble of it alone, or of it with itself under any
/// weights, is that evaluation bit for bit; an ensemble of two models lies between them.
/// The same on multiple-choice questions, from the NLLs of their choices' tokens.
#[test]
fn an_ensemble_of_one_model_or_of_identical_models_is_its_evaluation_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let paths = units(&small_llama(), dir.path());
    let docs: Vec<_> = corpus_docs("tech_docs").into_iter().take(20).collect();
    let arc = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/choices/arc.jsonl"),
    )
    .unwrap();
    let (questions, _) = choices::parse(&arc).unwrap();
    let config = EvalConfig::default();
    let nll = |path: &Path| {
        let model = LoadedModel::load(path, Device::Cpu).unwrap();
        let prepared = Prepared::new(&model, &docs, &config).unwrap();
        let text = TokenNll {
            layout: NllLayout::Text(prepared.layout().clone()),
            nll: prepared.token_nll(&model, config.batch_size),
        };
        let asked = PreparedChoices::new(&model, &questions, &config).unwrap();
        let answers = TokenNll {
            layout: NllLayout::Choices(asked.layout().clone()),
            nll: asked.token_nll(&model),
        };
        let stored = |t: TokenNll| TokenNll::decode(&t.encode()).unwrap();
        (
            (
                stored(text),
                Evaluation::from(evaluate(&model, &docs, &config).unwrap()),
            ),
            (stored(answers), Evaluation::Choices(asked.evaluate(&model))),
        )
    };
    let (text_a, answers_a) = nll(&paths[0]);
    let (text_b, answers_b) = nll(&paths[1]);
    for ((a, own), (b, other)) in [(text_a, text_b), (answers_a, answers_b)] {
        assert_eq!(a.totals(), own);
        assert_eq!(ensemble(&[&a], &[1.0]).unwrap(), own);
        assert_eq!(ensemble(&[&a, &a], &[0.5, 0.5]).unwrap(), own);
        assert_eq!(ensemble(&[&a, &a, &a], &[0.2, 0.3, 0.5]).unwrap(), own);
        assert_eq!(mean_of_units(&[&a], &[1.0]).unwrap(), own);
        let mixed = ensemble(&[&a, &b], &[0.5, 0.5]).unwrap().perplexity();
        let (pa, pb) = (own.perplexity(), other.perplexity());
        assert!(
            mixed <= pa.max(pb) && mixed != pa && mixed != pb,
            "{mixed} {pa} {pb}"
        );
    }
}

#[test]
fn a_unit_that_does_not_fit_the_base_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let llama = units(&small_llama(), &dir.path().join("l"));
    let gpt2 = units(&small_gpt2(), &dir.path().join("g"));
    let mut ws = workspace(&llama[0]);
    let foreign = std::fs::read(gpt2[0].join("model.safetensors")).unwrap();
    let err = ws
        .load_unit(&foreign, "gpt2-unit")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("gpt2-unit") && err.contains("tensors"),
        "{err}"
    );
    let err = ws
        .load_unit(b"not safetensors", "junk")
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("junk: "), "{err}");
    let unit = ws
        .load_unit(
            &std::fs::read(llama[0].join("model.safetensors")).unwrap(),
            "u",
        )
        .unwrap();
    let err = ws.merge(&[&unit], &[1.0, 1.0]).err().unwrap().to_string();
    assert_eq!(err, "1 checkpoints but 2 weights");
    let err = ws.merge(&[&unit], &[0.0]).err().unwrap().to_string();
    assert_eq!(err, "all weights are zero");
}

#[test]
fn the_alpha_gradient_equals_finite_differences_along_the_simplex() {
    let dir = tempfile::tempdir().unwrap();
    let paths = units(&small_llama(), dir.path());
    let mut ws = workspace(&paths[0]);
    let loaded: Vec<_> = paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
            ws.load_unit(&bytes, &p.display().to_string()).unwrap()
        })
        .collect();
    let chosen: Vec<_> = loaded.iter().collect();
    let docs: Vec<_> = corpus_docs("legal_licenses").into_iter().take(6).collect();
    let prepared = Prepared::new(ws.model(), &docs, &EvalConfig::default()).unwrap();
    let weights = [0.5, 0.3, 0.2];
    let (loss, gradient) = ws.alpha_gradient(&chosen, &weights, &prepared, 4).unwrap();
    // The loss it reports is the merge's mean NLL, as evaluation computes it.
    ws.merge(&chosen, &weights).unwrap();
    let mean_nll = |ws: &Workspace| prepared.evaluate(ws.model(), 4).total.mean_nll;
    assert!(
        (loss - mean_nll(&ws)).abs() < 1e-5,
        "{loss} {}",
        mean_nll(&ws)
    );
    // Along each direction e_i - e_j that stays on the simplex, a central difference of the
    // evaluated loss agrees with the gradient's g_i - g_j.
    let eps = 1e-2;
    for (i, j) in [(0, 1), (1, 2), (2, 0)] {
        let mut at = |sign: f64| {
            let mut w = weights;
            w[i] += sign * eps;
            w[j] -= sign * eps;
            ws.merge(&chosen, &w).unwrap();
            mean_nll(&ws)
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
        let analytic = gradient[i] - gradient[j];
        // (Measured here: the two agree to about 2e-6 on derivatives of about 1e-2.)
        assert!(
            analytic.abs() > 1e-3 && (numeric - analytic).abs() < 2e-5,
            "direction e{i} - e{j}: finite difference {numeric}, gradient {analytic}"
        );
    }
    // A second call gives the same gradient (no gradient is left accumulated).
    let (_, again) = ws.alpha_gradient(&chosen, &weights, &prepared, 4).unwrap();
    assert_eq!(again, gradient);
}
