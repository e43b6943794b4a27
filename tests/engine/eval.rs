use mixpool::engine::eval::{EvalConfig, evaluate};
use mixpool::engine::model::{LlamaConfig, ModelConfig};
use tch::{Kind, Tensor};

use crate::helpers::{corpus_docs, doc, init, small_gpt2, small_llama};

#[test]
fn all_zero_logits_give_perplexity_equal_to_the_vocabulary_size() {
    let config = ModelConfig::Llama(LlamaConfig {
        tie_word_embeddings: false,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        ..LlamaConfig::default()
    });
    let model = init(config, 0);
    tch::no_grad(|| {
        let _ = model.vs.variables()["lm_head.weight"]
            .shallow_clone()
            .zero_();
    });
    let docs = vec![
        doc("Uniform: every byte is as likely as any other.", None),
        doc("é ü", Some("x")),
    ];
    let r = evaluate(&model, &docs, &EvalConfig::default()).unwrap();
    assert!(
        (r.total.perplexity - 257.0).abs() < 1e-3,
        "{}",
        r.total.perplexity
    );
    assert!((r.total.mean_nll - 257f64.ln()).abs() < 1e-6);
    let bytes = (docs[0].text.len() + docs[1].text.len()) as u64;
    assert_eq!(r.total.bytes, bytes);
    assert_eq!(
        r.total.tokens, bytes,
        "bytes are tokens for the byte tokenizer"
    );
    let expected_bpb = bytes as f64 * 257f64.ln() / (2f64.ln() * bytes as f64);
    assert!((r.total.bits_per_byte - expected_bpb).abs() < 1e-6);
}

/// The evaluator's sum equals a hand-computed NLL: one forward pass over EOS + document.
#[test]
fn nll_matches_a_direct_computation_and_every_token_is_predicted_once() {
    for config in [small_llama(), small_gpt2()] {
        let model = init(config, 9);
        let text = "The quick brown fox jumps over the lazy dog.";
        let mut ids = vec![256i64];
        ids.extend(text.bytes().map(i64::from));
        let input = Tensor::from_slice(&ids[..ids.len() - 1]).view([1, -1]);
        let target = Tensor::from_slice(&ids[1..]).view([1, -1, 1]);
        let expected = tch::no_grad(|| {
            let logp = model.model.forward(&input).log_softmax(-1, Kind::Float);
            -logp
                .gather(-1, &target, false)
                .sum(Kind::Double)
                .double_value(&[])
        });
        let r = evaluate(&model, &[doc(text, None)], &EvalConfig::default()).unwrap();
        assert_eq!(r.total.tokens, text.len() as u64);
        assert!(
            (r.total.nll - expected).abs() < 1e-4 * expected,
            "{} vs {expected}",
            r.total.nll
        );
    }
}

#[test]
fn batching_and_padding_do_not_change_the_result() {
    let model = init(small_llama(), 2);
    let docs: Vec<_> = corpus_docs("code_c").into_iter().take(40).collect();
    let one = evaluate(
        &model,
        &docs,
        &EvalConfig {
            batch_size: 1,
            context: None,
        },
    )
    .unwrap();
    let many = evaluate(
        &model,
        &docs,
        &EvalConfig {
            batch_size: 13,
            context: None,
        },
    )
    .unwrap();
    assert_eq!(one.total.tokens, many.total.tokens);
    assert!((one.total.nll - many.total.nll).abs() < 1e-5 * one.total.nll);
}

#[test]
fn long_documents_are_cut_into_windows_that_predict_each_token_once() {
    let model = init(small_llama(), 2);
    let long = "abcdefghij".repeat(30);
    let docs = [doc(&long, None)];
    let full = evaluate(
        &model,
        &docs,
        &EvalConfig {
            batch_size: 4,
            context: None,
        },
    )
    .unwrap();
    let short = evaluate(
        &model,
        &docs,
        &EvalConfig {
            batch_size: 4,
            context: Some(16),
        },
    )
    .unwrap();
    assert_eq!(full.total.tokens, 300);
    assert_eq!(short.total.tokens, 300);
    assert_ne!(
        full.total.nll, short.total.nll,
        "shorter windows see less context"
    );
}

#[test]
fn per_domain_results_and_their_macro_average() {
    let model = init(small_gpt2(), 1);
    let docs = vec![
        doc("alpha alpha", Some("a")),
        doc("beta", Some("b")),
        doc("alpha again", Some("a")),
        doc("none", None),
    ];
    let r = evaluate(&model, &docs, &EvalConfig::default()).unwrap();
    assert_eq!(
        r.per_domain.keys().collect::<Vec<_>>(),
        ["a", "b", "default"]
    );
    assert_eq!(r.per_domain["a"].documents, 2);
    assert_eq!(r.per_domain["a"].bytes, 22);
    let sum: f64 = r.per_domain.values().map(|d| d.nll).sum();
    assert!((sum - r.total.nll).abs() < 1e-9);
    let mean = r.per_domain.values().map(|d| d.perplexity).sum::<f64>() / 3.0;
    assert!((r.macro_perplexity - mean).abs() < 1e-9);
    assert_eq!(r.total.documents, 4);
}

#[test]
fn an_empty_evaluation_set_is_an_error() {
    let model = init(small_gpt2(), 1);
    let err = evaluate(&model, &[], &EvalConfig::default()).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}
