use std::path::{Path, PathBuf};

use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::merge::{
    MergeError, merge_files, normalize_weights, token_weights, uniform_weights,
};
use tch::{Device, Kind, Tensor};

use crate::helpers::{init, small_gpt2, small_llama, tensors};

fn saved(model: &LoadedModel, dir: &Path) -> PathBuf {
    model.save(dir).unwrap();
    dir.join("model.safetensors")
}

fn read(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn merging_identical_checkpoints_returns_them_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(small_llama(), 21);
    let input = saved(&model, &dir.path().join("a"));
    let out = dir.path().join("merged.safetensors");
    for weights in [
        vec![1.0, 1.0, 1.0],
        vec![0.1, 0.7, 0.2],
        vec![3.0, 0.0, 5.0],
    ] {
        merge_files(
            &[input.clone(), input.clone(), input.clone()],
            &weights,
            Device::Cpu,
            &out,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&input).unwrap(),
            "weights {weights:?}"
        );
    }
}

#[test]
fn a_quarter_three_quarter_merge_equals_the_arithmetic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (init(small_gpt2(), 1), init(small_gpt2(), 2));
    let inputs = [
        saved(&a, &dir.path().join("a")),
        saved(&b, &dir.path().join("b")),
    ];
    let out = dir.path().join("merged.safetensors");
    let stats = merge_files(&inputs, &[1.0, 3.0], Device::Cpu, &out).unwrap();
    let merged = read(&out);
    assert_eq!(stats.tensors, merged.len());
    for ((name, m), ((_, ta), (_, tb))) in merged.iter().zip(tensors(&a).iter().zip(&tensors(&b))) {
        let expected = (ta.to_kind(Kind::Double) * 0.25 + tb.to_kind(Kind::Double) * 0.75)
            .to_kind(Kind::Float);
        assert!(m.equal(&expected), "{name}");
    }
}

#[test]
fn bf16_checkpoints_merge_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let write = |seed, path: &Path| {
        let m = init(small_llama(), seed);
        let t: Vec<(String, Tensor)> = tensors(&m)
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::BFloat16)))
            .collect();
        Tensor::write_safetensors(&t, path).unwrap();
        t
    };
    let (pa, pb) = (
        a.path().join("m.safetensors"),
        b.path().join("m.safetensors"),
    );
    let (ta, tb) = (write(1, &pa), write(2, &pb));
    let out = dir.path().join("out.safetensors");
    merge_files(&[pa, pb], &[0.5, 0.5], Device::Cpu, &out).unwrap();
    for ((name, m), ((_, x), (_, y))) in read(&out).iter().zip(ta.iter().zip(&tb)) {
        assert_eq!(m.kind(), Kind::BFloat16, "{name}");
        let expected =
            ((x.to_kind(Kind::Float) + y.to_kind(Kind::Float)) * 0.5).to_kind(Kind::BFloat16);
        assert!(m.equal(&expected), "{name}");
    }
}

#[test]
fn checkpoints_of_different_architectures_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let a = saved(&init(small_llama(), 1), &dir.path().join("a"));
    let b = saved(&init(small_gpt2(), 1), &dir.path().join("b"));
    let out = dir.path().join("out.safetensors");
    let err = merge_files(&[a.clone(), b], &[1.0, 1.0], Device::Cpu, &out).unwrap_err();
    assert!(matches!(err, MergeError::Mismatch { .. }), "{err}");
    assert!(!out.exists());

    let wider = mixpool::engine::model::LlamaConfig {
        hidden_size: 64,
        intermediate_size: 64,
        num_hidden_layers: 2,
        max_position_embeddings: 64,
        ..Default::default()
    };
    let c = saved(
        &init(mixpool::engine::model::ModelConfig::Llama(wider), 1),
        &dir.path().join("c"),
    );
    let err = merge_files(&[a.clone(), c], &[1.0, 1.0], Device::Cpu, &out).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");

    let d = dir.path().join("d.safetensors");
    let mut t = read(&a);
    t[0].1 = t[0].1.to_kind(Kind::Half);
    Tensor::write_safetensors(&t, &d).unwrap();
    let err = merge_files(&[a.clone(), d], &[1.0, 1.0], Device::Cpu, &out).unwrap_err();
    assert!(
        err.to_string().contains("Half") || err.to_string().contains("F16"),
        "{err}"
    );

    let err = merge_files(
        &[a, dir.path().join("missing.safetensors")],
        &[1.0, 1.0],
        Device::Cpu,
        &out,
    )
    .unwrap_err();
    assert!(matches!(err, MergeError::Read { .. }), "{err}");
}

#[test]
fn weights_must_be_finite_non_negative_and_not_all_zero() {
    assert_eq!(normalize_weights(&[1.0, 3.0]).unwrap(), vec![0.25, 0.75]);
    assert!(matches!(
        normalize_weights(&[1.0, -0.5]),
        Err(MergeError::BadWeight { index: 1, .. })
    ));
    assert!(matches!(
        normalize_weights(&[f64::NAN]),
        Err(MergeError::BadWeight { index: 0, .. })
    ));
    assert!(matches!(
        normalize_weights(&[f64::INFINITY, 1.0]),
        Err(MergeError::BadWeight { .. })
    ));
    assert!(matches!(
        normalize_weights(&[0.0, 0.0]),
        Err(MergeError::ZeroWeights)
    ));
    assert!(matches!(normalize_weights(&[]), Err(MergeError::NoInputs)));
    assert_eq!(uniform_weights(4), vec![0.25; 4]);
    assert_eq!(token_weights(&[100, 300]).unwrap(), vec![0.25, 0.75]);
    let dir = tempfile::tempdir().unwrap();
    let a = saved(&init(small_llama(), 1), dir.path());
    let err = merge_files(&[a], &[0.5, 0.5], Device::Cpu, &dir.path().join("o")).unwrap_err();
    assert!(matches!(
        err,
        MergeError::WeightCount {
            inputs: 1,
            weights: 2
        }
    ));
}

#[test]
fn a_refused_merge_of_model_directories_leaves_no_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    init(small_llama(), 1).save(&a).unwrap();
    init(small_llama(), 2).save(&b).unwrap();
    let weights = b.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    let out = dir.path().join("merged");
    let err = mixpool::engine::merge::merge_model_dirs(&[a, b], &[1.0, 1.0], Device::Cpu, &out)
        .unwrap_err();
    assert!(
        err.to_string().contains(&weights.display().to_string()),
        "{err}"
    );
    assert!(!out.exists(), "no output folder after a refused merge");
}
