use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::model::{LlamaConfig, ModelConfig};
use tch::{Device, Kind, Tensor};

use crate::helpers::{init, small_gpt2, small_llama, tensors};

fn names(model: &LoadedModel) -> Vec<String> {
    tensors(model).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn llama_parameters_have_hugging_face_names_and_shapes() {
    let m = init(small_llama(), 0);
    let vars = m.vs.variables();
    let shape = |n: &str| vars.get(n).unwrap_or_else(|| panic!("no {n}")).size();
    assert_eq!(shape("model.embed_tokens.weight"), [257, 32]);
    assert_eq!(shape("model.layers.1.self_attn.q_proj.weight"), [32, 32]);
    assert_eq!(
        shape("model.layers.1.self_attn.k_proj.weight"),
        [16, 32],
        "2 of 4 heads: grouped-query"
    );
    assert_eq!(shape("model.layers.0.mlp.gate_proj.weight"), [64, 32]);
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), [32, 64]);
    assert_eq!(shape("model.layers.0.input_layernorm.weight"), [32]);
    assert_eq!(
        shape("model.layers.0.post_attention_layernorm.weight"),
        [32]
    );
    assert_eq!(shape("model.norm.weight"), [32]);
    assert!(
        !names(&m).iter().any(|n| n.starts_with("lm_head")),
        "tied embeddings have no lm_head"
    );
    assert_eq!(names(&m).len(), 1 + 2 * 9 + 1);
}

#[test]
fn untied_llama_with_qkv_bias_has_lm_head_and_biases() {
    let config = ModelConfig::Llama(LlamaConfig {
        tie_word_embeddings: false,
        attention_bias: true,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        ..LlamaConfig::default()
    });
    let m = init(config, 0);
    let vars = m.vs.variables();
    assert_eq!(vars["lm_head.weight"].size(), [257, 32]);
    for p in ["q_proj", "k_proj", "v_proj"] {
        assert_eq!(
            vars[&format!("model.layers.0.self_attn.{p}.bias")].size(),
            [32]
        );
    }
    assert!(!vars.contains_key("model.layers.0.self_attn.o_proj.bias"));
}

#[test]
fn gpt2_parameters_have_hugging_face_names_and_conv1d_shapes() {
    let m = init(small_gpt2(), 0);
    let vars = m.vs.variables();
    assert_eq!(vars["transformer.wte.weight"].size(), [257, 32]);
    assert_eq!(vars["transformer.wpe.weight"].size(), [64, 32]);
    assert_eq!(
        vars["transformer.h.0.attn.c_attn.weight"].size(),
        [32, 96],
        "Conv1D is [in, out]"
    );
    assert_eq!(vars["transformer.h.1.mlp.c_fc.weight"].size(), [32, 128]);
    assert_eq!(vars["transformer.h.1.mlp.c_proj.bias"].size(), [32]);
    assert_eq!(vars["transformer.ln_f.bias"].size(), [32]);
    assert!(!vars.contains_key("lm_head.weight"));
}

#[test]
fn presets_have_their_documented_sizes() {
    let count = |name| {
        let m = LoadedModel::init(ModelConfig::preset(name).unwrap(), 0, Device::Cpu).unwrap();
        m.parameters()
    };
    let tiny = count("tiny");
    assert!((500_000..700_000).contains(&tiny), "tiny has {tiny}");
    let small = count("small");
    assert!(
        (8_000_000..12_000_000).contains(&small),
        "small has {small}"
    );
    let ModelConfig::Llama(c) = ModelConfig::preset("base-130m").unwrap() else {
        panic!()
    };
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.max_position_embeddings
        ),
        (768, 12, 12, 2048)
    );
    assert!(ModelConfig::preset("huge").is_none());
}

#[test]
fn config_json_round_trips_and_names_the_architecture() {
    for config in [small_llama(), small_gpt2()] {
        let json = serde_json::to_value(&config).unwrap();
        assert!(json["model_type"].is_string() && json["architectures"].is_array());
        assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), config);
    }
    let err = serde_json::from_str::<ModelConfig>(r#"{"model_type": "mamba"}"#).unwrap_err();
    assert!(err.to_string().contains("mamba"), "{err}");
}

#[test]
fn invalid_shapes_are_refused() {
    let bad = ModelConfig::Llama(LlamaConfig {
        num_attention_heads: 3,
        ..LlamaConfig::default()
    });
    let err = LoadedModel::init(bad, 0, Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("num_attention_heads"), "{err}");
    let bad = ModelConfig::Llama(LlamaConfig {
        num_key_value_heads: 3,
        ..LlamaConfig::default()
    });
    let err = LoadedModel::init(bad, 0, Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");
}

/// Changing a later token must not change the logits at earlier positions.
#[test]
fn both_architectures_are_causal() {
    for config in [small_llama(), small_gpt2()] {
        let m = init(config, 3);
        let a = Tensor::from_slice(&[5i64, 9, 200, 17, 33, 256]).view([1, 6]);
        let b = Tensor::from_slice(&[5i64, 9, 200, 17, 99, 1]).view([1, 6]);
        let (la, lb) = tch::no_grad(|| (m.model.forward(&a), m.model.forward(&b)));
        assert_eq!(la.size(), [1, 6, 257]);
        assert!(
            la.narrow(1, 0, 4)
                .allclose(&lb.narrow(1, 0, 4), 1e-6, 1e-6, false)
        );
        assert!(
            !la.narrow(1, 4, 2)
                .allclose(&lb.narrow(1, 4, 2), 1e-3, 1e-3, false)
        );
    }
}

#[test]
fn a_batch_gives_each_row_the_logits_it_gets_alone() {
    let m = init(small_llama(), 4);
    let rows = Tensor::from_slice(&[1i64, 2, 3, 4, 10, 20, 30, 40]).view([2, 4]);
    tch::no_grad(|| {
        let batch = m.model.forward(&rows);
        let alone = m.model.forward(&rows.narrow(0, 1, 1));
        assert!(batch.narrow(0, 1, 1).allclose(&alone, 1e-5, 1e-6, false));
    });
}

#[test]
fn the_same_seed_gives_the_same_model_and_another_seed_does_not() {
    let (a, b, c) = (
        init(small_llama(), 11),
        init(small_llama(), 11),
        init(small_llama(), 12),
    );
    crate::helpers::assert_same_weights(&a, &b);
    let w = |m: &LoadedModel| m.vs.variables()["model.embed_tokens.weight"].shallow_clone();
    assert!(!w(&a).equal(&w(&c)));
    assert_eq!(w(&a).kind(), Kind::Float);
}
