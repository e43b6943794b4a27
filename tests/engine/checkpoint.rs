use mixpool::engine::checkpoint::{LoadedModel, read_config};
use tch::{Device, Tensor};

use crate::helpers::{assert_same_weights, init, small_gpt2, small_llama};

#[test]
fn save_then_load_gives_back_the_same_tensors_and_logits() {
    for config in [small_llama(), small_gpt2()] {
        let dir = tempfile::tempdir().unwrap();
        let model = init(config.clone(), 5);
        model.save(dir.path()).unwrap();
        assert_eq!(read_config(dir.path()).unwrap(), config);
        let loaded = LoadedModel::load(dir.path(), Device::Cpu).unwrap();
        assert_same_weights(&model, &loaded);
        let tokens = Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9]).view([1, 6]);
        tch::no_grad(|| {
            assert!(
                model
                    .model
                    .forward(&tokens)
                    .equal(&loaded.model.forward(&tokens))
            )
        });
        assert!(!dir.path().join("model.partial.safetensors").exists());
    }
}

#[test]
fn loading_a_directory_with_missing_or_broken_files_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = LoadedModel::load(dir.path(), Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");

    init(small_llama(), 1).save(dir.path()).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let err = LoadedModel::load(dir.path(), Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // Weights of a different shape than the config says.
    init(small_gpt2(), 1).save(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&small_llama()).unwrap(),
    )
    .unwrap();
    let err = LoadedModel::load(dir.path(), Device::Cpu).err().unwrap();
    assert!(
        err.to_string()
            .contains("cannot find the tensor named model.layers."),
        "{err}"
    );

    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "llama", "hidden_size": -4}"#,
    )
    .unwrap();
    let err = LoadedModel::load(dir.path(), Device::Cpu).err().unwrap();
    assert!(
        err.to_string().contains("hidden_size must be positive"),
        "{err}"
    );
}
