use std::path::PathBuf;

use mixpool::engine::checkpoint::LoadedModel;
use mixpool::engine::data::{self, Document};
use mixpool::engine::model::{Gpt2Config, LlamaConfig, ModelConfig};
use tch::Device;

/// The multi-domain corpus: `MIXPOOL_CORPUS`, else `../shared/corpus` beside the project.
pub fn corpus(domain: &str) -> PathBuf {
    let dir = std::env::var_os("MIXPOOL_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    let path = dir.join(format!("{domain}.jsonl"));
    assert!(
        path.exists(),
        "{} is missing: set MIXPOOL_CORPUS to a folder of domain JSONL files",
        path.display()
    );
    path
}

pub fn corpus_docs(domain: &str) -> Vec<Document> {
    data::read_documents(&corpus(domain)).unwrap()
}

/// A small Llama with grouped-query attention, fast enough for many tests.
pub fn small_llama() -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        ..LlamaConfig::default()
    })
}

pub fn small_gpt2() -> ModelConfig {
    ModelConfig::Gpt2(Gpt2Config {
        n_embd: 32,
        n_layer: 2,
        n_head: 4,
        n_positions: 64,
        ..Gpt2Config::default()
    })
}

pub fn init(config: ModelConfig, seed: u64) -> LoadedModel {
    tch::set_num_threads(1);
    LoadedModel::init(config, seed, Device::Cpu).unwrap()
}

/// Every variable of the model, sorted by name.
pub fn tensors(model: &LoadedModel) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<_> = model.vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn assert_same_weights(a: &LoadedModel, b: &LoadedModel) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}

pub fn doc(text: &str, domain: Option<&str>) -> Document {
    Document {
        text: text.into(),
        domain: domain.map(String::from),
    }
}
