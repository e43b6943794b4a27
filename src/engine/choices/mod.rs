//! Multiple-choice tasks in cloze form: each question a context and its choices, scored by the
//! log-likelihood a model gives each choice after the context, as the current mixture
//! selection work scores small models (OLMES's "RC" format).
//!
//! The convention: for each choice, ll = Σ log p(choice token | BOS, context, earlier choice
//! tokens), with the context and the choice tokenised apart and concatenated (the choice
//! string exactly as given, so `" Paris"` carries its space), the context cut from the left
//! when BOS + context + choice exceed the model's window. Per task, over its questions:
//! `bits_per_byte_gold` is the mean of −ll(gold) / (UTF-8 bytes of the gold choice · ln 2);
//! `accuracy` the share of questions whose gold choice has the highest ll per byte (ties to
//! the lowest index), `accuracy_raw` the same by raw ll. A set's figures are the macro means
//! over its tasks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::checkpoint::LoadedModel;
use super::eval::{EvalConfig, position_nll};

mod parse;

pub use parse::{ChoicesError, Question, Shape, looks_like_choices, parse, parse_line};

/// A task's figures (or a set's: the macro means over its tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub bits_per_byte_gold: f64,
    pub accuracy: f64,
    pub accuracy_raw: f64,
    /// Questions.
    pub n: u64,
}

/// A model's figures on a choices set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceResult {
    /// The macro means over tasks (`n`: every question).
    #[serde(flatten)]
    pub total: TaskScore,
    /// 2^bits_per_byte_gold: the gold answers' perplexity per byte, so that whatever ranks
    /// by perplexity ranks a choices set by `bits_per_byte_gold`.
    pub perplexity: f64,
    pub per_task: BTreeMap<String, TaskScore>,
    /// Tokens the model read (inputs of every choice's sequence).
    pub tokens: u64,
}

/// One choice's sequence: BOS, the context's tail, the choice.
struct Sequence {
    ids: Vec<i64>,
    /// The choice's tokens: the sequence's last ones.
    choice_tokens: usize,
    question: u32,
    choice: u32,
}

/// A choices set tokenised for one model: made once, scored with any weights of that
/// architecture.
pub struct PreparedChoices {
    /// Longest first, so each batch pads little.
    sequences: Vec<Sequence>,
    layout: ChoiceLayout,
    /// Where each choice's tokens start in [`ChoiceLayout`] order, by question and choice.
    offsets: Vec<Vec<usize>>,
    /// Token positions per batch (the text evaluation's batch of full windows).
    batch_tokens: usize,
}

/// One question's place in a [`ChoiceLayout`]: its task's index, its gold index and per
/// choice (UTF-8 bytes, tokens).
pub type QuestionLayout = (u32, u32, Vec<(u64, u32)>);

/// What the figures of a choices set need besides its choice tokens' NLLs, which are kept
/// question by question, choice by choice, token by token (a unit model's stored per-token
/// NLLs on a choices set are in this order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLayout {
    pub tasks: Vec<String>,
    pub questions: Vec<QuestionLayout>,
    /// Tokens a scoring reads (inputs of every choice's sequence).
    pub read: u64,
}

impl PreparedChoices {
    pub fn new(
        model: &LoadedModel,
        questions: &[Question],
        config: &EvalConfig,
    ) -> Result<PreparedChoices, ChoicesError> {
        let window = config
            .context
            .unwrap_or(model.config.context_length() as usize)
            .clamp(1, model.config.context_length() as usize);
        let encode = |text: &str| -> Result<Vec<i64>, ChoicesError> {
            Ok(model
                .tokenizer
                .encode(text)
                .map_err(|e| ChoicesError::Tokenize(e.to_string()))?
                .into_iter()
                .map(i64::from)
                .collect())
        };
        let bos = model.tokenizer.bos() as i64;
        let mut tasks: Vec<String> = Vec::new();
        let mut meta = Vec::with_capacity(questions.len());
        let mut sequences = Vec::new();
        for (q, question) in questions.iter().enumerate() {
            let task = tasks
                .iter()
                .position(|t| *t == question.task)
                .unwrap_or_else(|| {
                    tasks.push(question.task.clone());
                    tasks.len() - 1
                });
            let context = encode(&question.context)?;
            let mut tokens = Vec::with_capacity(question.choices.len());
            for (c, choice) in question.choices.iter().enumerate() {
                let choice = encode(choice)?;
                if choice.is_empty() || choice.len() > window {
                    return Err(ChoicesError::TooLong {
                        tokens: choice.len(),
                        window,
                    });
                }
                // BOS + context + choice, at most window + 1 ids (window predictions).
                let keep = context.len().min(window - choice.len());
                let mut ids = Vec::with_capacity(1 + keep + choice.len());
                ids.push(bos);
                ids.extend_from_slice(&context[context.len() - keep..]);
                ids.extend_from_slice(&choice);
                tokens.push((question.choices[c].len() as u64, choice.len() as u32));
                sequences.push(Sequence {
                    ids,
                    choice_tokens: choice.len(),
                    question: q as u32,
                    choice: c as u32,
                });
            }
            meta.push((task as u32, question.gold as u32, tokens));
        }
        if questions.is_empty() {
            return Err(ChoicesError::Empty);
        }
        sequences.sort_by_key(|s| std::cmp::Reverse(s.ids.len()));
        let layout = ChoiceLayout {
            tasks,
            questions: meta,
            read: sequences.iter().map(|s| s.ids.len() as u64 - 1).sum(),
        };
        Ok(PreparedChoices {
            sequences,
            offsets: layout.offsets(),
            layout,
            batch_tokens: config.batch_size.max(1) * window,
        })
    }

    /// The NLL of every choice token, in [`ChoiceLayout`] order.
    pub fn token_nll(&self, model: &LoadedModel) -> Vec<f32> {
        let mut out = vec![0f32; self.layout.tokens()];
        let device = model.vs.device();
        tch::no_grad(|| {
            let mut start = 0;
            while start < self.sequences.len() {
                // Longest first: the first sequence of a batch sets its width.
                let width = self.sequences[start].ids.len() - 1;
                let rows = (self.batch_tokens / width.max(1)).max(1);
                let batch = &self.sequences[start..(start + rows).min(self.sequences.len())];
                let windows: Vec<&[i64]> = batch.iter().map(|s| s.ids.as_slice()).collect();
                let nll = position_nll(model, &windows, device).to_device(Device::Cpu);
                let width = nll.size()[1] as usize;
                let nll = Vec::<f32>::try_from(&nll.view([-1])).expect("a float tensor");
                for (row, s) in batch.iter().enumerate() {
                    let end = row * width + s.ids.len() - 1;
                    let at = self.offsets[s.question as usize][s.choice as usize];
                    out[at..at + s.choice_tokens].copy_from_slice(&nll[end - s.choice_tokens..end]);
                }
                start += batch.len();
            }
        });
        out
    }

    /// What scoring needs besides the NLLs.
    pub fn layout(&self) -> &ChoiceLayout {
        &self.layout
    }

    /// Tokens a scoring reads.
    pub fn tokens(&self) -> u64 {
        self.layout.read
    }

    /// The model's figures on the set.
    pub fn evaluate(&self, model: &LoadedModel) -> ChoiceResult {
        let nll = self.token_nll(model);
        self.layout.totals(|i| nll[i] as f64)
    }
}

impl ChoiceLayout {
    /// Choice tokens in all questions.
    pub fn tokens(&self) -> usize {
        self.questions
            .iter()
            .flat_map(|(_, _, c)| c.iter().map(|&(_, t)| t as usize))
            .sum()
    }

    /// Where each choice's tokens start, by question and choice.
    fn offsets(&self) -> Vec<Vec<usize>> {
        let mut at = 0;
        self.questions
            .iter()
            .map(|(_, _, choices)| {
                choices
                    .iter()
                    .map(|&(_, tokens)| {
                        at += tokens as usize;
                        at - tokens as usize
                    })
                    .collect()
            })
            .collect()
    }

    /// The figures of per-token NLLs, `nll(i)` for the i-th choice token in layout order:
    /// each choice's log-likelihood is minus the sum of its tokens' NLLs, in f64 in order.
    pub fn totals(&self, nll: impl Fn(usize) -> f64) -> ChoiceResult {
        let mut at = 0usize;
        let ll: Vec<Vec<f64>> = self
            .questions
            .iter()
            .map(|(_, _, choices)| {
                choices
                    .iter()
                    .map(|&(_, tokens)| {
                        let sum: f64 = (at..at + tokens as usize).map(&nll).sum();
                        at += tokens as usize;
                        -sum
                    })
                    .collect()
            })
            .collect();
        self.score(&ll)
    }

    /// The figures of given log-likelihoods (by question and choice).
    pub fn score(&self, ll: &[Vec<f64>]) -> ChoiceResult {
        // Per task: Σ bits per byte of gold, correct by ll per byte, correct by ll, n.
        let mut sums = vec![(0.0f64, 0u64, 0u64, 0u64); self.tasks.len()];
        for ((task, gold, choices), ll) in self.questions.iter().zip(ll) {
            let (task, gold) = (*task as usize, *gold as usize);
            let bytes = |k: usize| choices[k].0 as f64;
            let best = |value: &dyn Fn(usize) -> f64| -> usize {
                (1..ll.len()).fold(0, |b, k| if value(k) > value(b) { k } else { b })
            };
            let s = &mut sums[task];
            s.0 += -ll[gold] / (bytes(gold) * std::f64::consts::LN_2);
            s.1 += u64::from(best(&|k| ll[k] / bytes(k)) == gold);
            s.2 += u64::from(best(&|k| ll[k]) == gold);
            s.3 += 1;
        }
        let per_task: BTreeMap<String, TaskScore> = self
            .tasks
            .iter()
            .zip(&sums)
            .map(|(name, &(bpb, acc, raw, n))| {
                let n_f = n as f64;
                (
                    name.clone(),
                    TaskScore {
                        bits_per_byte_gold: bpb / n_f,
                        accuracy: acc as f64 / n_f,
                        accuracy_raw: raw as f64 / n_f,
                        n,
                    },
                )
            })
            .collect();
        let tasks = per_task.len() as f64;
        let mean = |f: fn(&TaskScore) -> f64| per_task.values().map(f).sum::<f64>() / tasks;
        let bits_per_byte_gold = mean(|t| t.bits_per_byte_gold);
        ChoiceResult {
            total: TaskScore {
                bits_per_byte_gold,
                accuracy: mean(|t| t.accuracy),
                accuracy_raw: mean(|t| t.accuracy_raw),
                n: self.questions.len() as u64,
            },
            perplexity: bits_per_byte_gold.exp2(),
            per_task,
            tokens: self.read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three questions in two tasks, with log-likelihoods given: each figure by hand.
    #[test]
    fn the_figures_by_hand() {
        // Per choice (UTF-8 bytes, tokens).
        let layout = ChoiceLayout {
            tasks: vec!["a".into(), "b".into()],
            questions: vec![
                (0, 0, vec![(2, 1), (4, 2)]),
                (0, 1, vec![(1, 1), (1, 1), (1, 1)]),
                (1, 0, vec![(3, 2), (3, 1)]),
            ],
            read: 30,
        };
        let ll = vec![
            // Per byte −1 and −0.75: wrong by ll per byte, right by raw ll.
            vec![-2.0, -3.0],
            // A tie between choices 1 and 2 goes to the lowest index: right both ways.
            vec![-5.0, -1.0, -1.0],
            // Right both ways.
            vec![-3.0, -6.0],
        ];
        let r = layout.score(&ll);
        // The same log-likelihoods as per-token NLLs in layout order give the same figures.
        let nll = [2.0, 1.0, 2.0, 5.0, 1.0, 1.0, 1.5, 1.5, 6.0];
        assert_eq!(layout.tokens(), nll.len());
        assert_eq!(layout.totals(|i| nll[i]), r);
        assert_eq!(r.tokens, 30);
        let ln2 = std::f64::consts::LN_2;
        let a = &r.per_task["a"];
        assert_eq!(a.n, 2);
        assert!((a.bits_per_byte_gold - (2.0 / (2.0 * ln2) + 1.0 / ln2) / 2.0).abs() < 1e-12);
        assert_eq!((a.accuracy, a.accuracy_raw), (0.5, 1.0));
        let b = &r.per_task["b"];
        assert!((b.bits_per_byte_gold - 3.0 / (3.0 * ln2)).abs() < 1e-12);
        assert_eq!((b.accuracy, b.accuracy_raw, b.n), (1.0, 1.0, 1));
        // The set: macro means over the two tasks.
        assert!(
            (r.total.bits_per_byte_gold - (a.bits_per_byte_gold + b.bits_per_byte_gold) / 2.0)
                .abs()
                < 1e-12
        );
        assert_eq!(
            (r.total.accuracy, r.total.accuracy_raw, r.total.n),
            (0.75, 1.0, 3)
        );
        assert!((r.perplexity - r.total.bits_per_byte_gold.exp2()).abs() < 1e-12);
    }
}
