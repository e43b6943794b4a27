//! The ensemble proxy's arithmetic: a mixture scored as the mixture of its unit models'
//! next-token distributions, −ln Σ_k α_k p_k(token), from each unit's stored per-token NLLs,
//! with no forward pass. On held-out text the NLLs are of every predicted token; on a set of
//! questions, of every choice's tokens (so each choice's log-likelihood under the ensemble
//! is the sum of its tokens' mixed log-probabilities, and the figures follow as a model's do).
//!
//! Per token the sum is taken as m − ln(Σ_k α_k e^{m − nll_k} / Σ_k α_k) with m the smallest
//! NLL, so it never underflows, and a mixture of one unit, or of identical units, returns
//! that unit's NLLs exactly (every term is then α_k · 1, the quotient exactly 1). The totals
//! are summed by [`Layout::totals`], as a model's own evaluation is: the ensemble of one unit
//! is that unit's score bit for bit.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::choices::{ChoiceLayout, ChoiceResult, TaskScore};
use super::eval::{EvalResult, Evaluation, Layout, Totals};
use super::merge::{MergeError, normalize_weights};

/// A unit model's NLL of every predicted token of one eval set, and where each belongs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenNll {
    pub layout: NllLayout,
    pub nll: Vec<f32>,
}

/// Where per-token NLLs belong: windows of held-out text, or the choices of questions.
/// Stored untagged, so files written before questions had NLLs read as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NllLayout {
    Text(Layout),
    Choices(ChoiceLayout),
}

impl NllLayout {
    pub fn tokens(&self) -> usize {
        match self {
            NllLayout::Text(l) => l.tokens(),
            NllLayout::Choices(l) => l.tokens(),
        }
    }

    /// The figures of per-token NLLs in this layout's order, as a model's evaluation sums them.
    pub fn totals(&self, nll: impl Fn(usize) -> f64) -> Evaluation {
        match self {
            NllLayout::Text(l) => Evaluation::Text(l.totals(nll)),
            NllLayout::Choices(l) => Evaluation::Choices(l.totals(nll)),
        }
    }
}

/// What a stored file starts with: the format's name and version.
const MAGIC: &[u8; 8] = b"MPNLL01\n";

#[derive(Serialize, Deserialize)]
struct Header {
    layout: NllLayout,
    tokens: usize,
}

impl TokenNll {
    /// The model's own figures.
    pub fn totals(&self) -> Evaluation {
        self.layout.totals(|i| self.nll[i] as f64)
    }

    /// The stored form: the magic, a little-endian u64 header length, the JSON header (the
    /// layout), then one little-endian f32 per token.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&Header {
            layout: self.layout.clone(),
            tokens: self.nll.len(),
        })
        .expect("layouts serialise");
        let mut out = Vec::with_capacity(16 + header.len() + 4 * self.nll.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for x in &self.nll {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    /// Reads the stored form; an error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<TokenNll, String> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err("not a per-token NLL file (bad magic)".into());
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        let body = bytes
            .get(16..)
            .filter(|b| b.len() >= len)
            .ok_or("truncated header")?;
        let header: Header =
            serde_json::from_slice(&body[..len]).map_err(|e| format!("header: {e}"))?;
        let data = &body[len..];
        if data.len() != 4 * header.tokens || header.tokens != header.layout.tokens() {
            return Err(format!(
                "{} bytes of NLLs for {} tokens (the layout has {})",
                data.len(),
                header.tokens,
                header.layout.tokens()
            ));
        }
        let nll = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(TokenNll {
            layout: header.layout,
            nll,
        })
    }
}

/// The ensemble of `units` with `weights` (normalised here): its figures on their eval set.
/// The units must share one layout (one eval set, tokenizer and context).
pub fn ensemble(units: &[&TokenNll], weights: &[f64]) -> Result<Evaluation, MergeError> {
    if units.len() != weights.len() {
        return Err(MergeError::WeightCount {
            inputs: units.len(),
            weights: weights.len(),
        });
    }
    let weights = normalize_weights(weights)?;
    same_layout(units)?;
    let layout = &units[0].layout;
    let sum: f64 = weights.iter().sum();
    let nll: Vec<f64> = (0..layout.tokens())
        .map(|i| {
            let m = units
                .iter()
                .map(|u| u.nll[i] as f64)
                .fold(f64::INFINITY, f64::min);
            let s: f64 = units
                .iter()
                .zip(&weights)
                .map(|(u, w)| w * (m - u.nll[i] as f64).exp())
                .sum();
            m - (s / sum).ln()
        })
        .collect();
    Ok(layout.totals(|i| nll[i]))
}

/// The `units` proxy: the weighted mean of `units`' own figures (weights normalised here).
/// On text, of their perplexities, overall and per domain, each as the totals that
/// perplexity implies over the eval set's tokens; on questions, of each task's bits per byte
/// of the gold answers and accuracies. The mixture's unit models are not combined at all:
/// this is the baseline a combining proxy has to beat. One unit gives its own figures
/// exactly.
pub fn mean_of_units(units: &[&TokenNll], weights: &[f64]) -> Result<Evaluation, MergeError> {
    if units.len() != weights.len() {
        return Err(MergeError::WeightCount {
            inputs: units.len(),
            weights: weights.len(),
        });
    }
    let weights = normalize_weights(weights)?;
    same_layout(units)?;
    let own: Vec<Evaluation> = units.iter().map(|u| u.totals()).collect();
    let texts: Option<Vec<EvalResult>> = own
        .iter()
        .map(|e| match e {
            Evaluation::Text(r) => Some(r.clone()),
            Evaluation::Choices(_) => None,
        })
        .collect();
    match texts {
        Some(own) => Ok(Evaluation::Text(mean_of_texts(&own, &weights))),
        None => {
            let own: Vec<&ChoiceResult> = own
                .iter()
                .filter_map(|e| match e {
                    Evaluation::Choices(r) => Some(r),
                    Evaluation::Text(_) => None,
                })
                .collect();
            Ok(Evaluation::Choices(mean_of_choices(&own, &weights)))
        }
    }
}

/// The units' layouts are one (one eval set, tokenizer and context).
fn same_layout(units: &[&TokenNll]) -> Result<(), MergeError> {
    match units.iter().position(|u| u.layout != units[0].layout) {
        Some(k) => Err(MergeError::Mismatch {
            path: format!("unit {k}"),
            first: "unit 0".into(),
            message: "per-token NLLs of another eval set or tokenizer".into(),
        }),
        None => Ok(()),
    }
}

/// Each task's figures, and the set's, as the weighted means of the units'.
fn mean_of_choices(own: &[&ChoiceResult], weights: &[f64]) -> ChoiceResult {
    let mean = |score: &dyn Fn(&ChoiceResult) -> &TaskScore| {
        let of = |f: fn(&TaskScore) -> f64| -> f64 {
            own.iter().zip(weights).map(|(r, w)| w * f(score(r))).sum()
        };
        TaskScore {
            bits_per_byte_gold: of(|t| t.bits_per_byte_gold),
            accuracy: of(|t| t.accuracy),
            accuracy_raw: of(|t| t.accuracy_raw),
            n: score(own[0]).n,
        }
    };
    let total = mean(&|r| &r.total);
    ChoiceResult {
        perplexity: total.bits_per_byte_gold.exp2(),
        per_task: own[0]
            .per_task
            .keys()
            .map(|task| (task.clone(), mean(&|r| &r.per_task[task])))
            .collect(),
        total,
        tokens: own[0].tokens,
    }
}

fn mean_of_texts(own: &[EvalResult], weights: &[f64]) -> EvalResult {
    let mean = |ppl: &dyn Fn(&EvalResult) -> f64| -> f64 {
        own.iter().zip(weights).map(|(r, w)| w * ppl(r)).sum()
    };
    let like = |t: &Totals, perplexity: f64| {
        Totals::of_perplexity(perplexity, t.tokens, t.bytes, t.documents)
    };
    let first = &own[0];
    let per_domain: BTreeMap<String, Totals> = first
        .per_domain
        .iter()
        .map(|(name, t)| {
            let ppl = mean(&|r| r.per_domain[name].perplexity);
            (name.clone(), like(t, ppl))
        })
        .collect();
    let n = per_domain.len() as f64;
    EvalResult {
        total: like(&first.total, mean(&|r| r.total.perplexity)),
        macro_perplexity: per_domain.values().map(|t| t.perplexity).sum::<f64>() / n,
        macro_bits_per_byte: per_domain.values().map(|t| t.bits_per_byte).sum::<f64>() / n,
        per_domain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(nll: &[f32]) -> TokenNll {
        TokenNll {
            layout: NllLayout::Text(Layout {
                domains: vec!["a".into(), "b".into()],
                sizes: vec![(10, 1), (7, 2)],
                windows: vec![(1, 2), (0, 2), (1, 1)],
            }),
            nll: nll.to_vec(),
        }
    }

    /// Two questions of two choices (1 and 2 tokens; 2 and 1), task "t".
    fn answers(nll: &[f32]) -> TokenNll {
        TokenNll {
            layout: NllLayout::Choices(ChoiceLayout {
                tasks: vec!["t".into()],
                questions: vec![(0, 0, vec![(3, 1), (5, 2)]), (0, 1, vec![(4, 2), (2, 1)])],
                read: 20,
            }),
            nll: nll.to_vec(),
        }
    }

    fn text(e: Evaluation) -> EvalResult {
        match e {
            Evaluation::Text(r) => r,
            Evaluation::Choices(_) => panic!("figures of questions, not text"),
        }
    }

    fn choices(e: Evaluation) -> ChoiceResult {
        match e {
            Evaluation::Choices(r) => r,
            Evaluation::Text(_) => panic!("figures of text, not questions"),
        }
    }

    #[test]
    fn one_unit_or_identical_units_give_the_unit_exactly() {
        let a = unit(&[0.3, 2.5, 1e-7, 17.0, 4.25]);
        let alone = a.totals();
        assert_eq!(ensemble(&[&a], &[1.0]).unwrap(), alone);
        assert_eq!(ensemble(&[&a], &[0.3]).unwrap(), alone);
        assert_eq!(ensemble(&[&a, &a], &[0.5, 0.5]).unwrap(), alone);
        assert_eq!(ensemble(&[&a, &a, &a], &[1.0, 1.0, 1.0]).unwrap(), alone);
        assert_eq!(ensemble(&[&a, &a, &a], &[0.1, 0.7, 0.2]).unwrap(), alone);
    }

    #[test]
    fn the_mixture_of_distributions_by_hand() {
        // Token 0: p = e^-1 and e^-3 mixed 3:1 → −ln(0.75 e^-1 + 0.25 e^-3).
        let a = unit(&[1.0, 1.0, 1.0, 1.0, 1.0]);
        let b = unit(&[3.0, 1.0, 1.0, 1.0, 1.0]);
        let mixed = text(ensemble(&[&a, &b], &[3.0, 1.0]).unwrap());
        let token0 = -(0.75 * (-1.0f64).exp() + 0.25 * (-3.0f64).exp()).ln();
        // Window (b, 2 tokens) holds tokens 0 and 1; window (b, 1 token) holds token 4.
        let b_domain = &mixed.per_domain["b"];
        assert!((b_domain.nll - (token0 + 1.0 + 1.0)).abs() < 1e-12);
        assert_eq!(b_domain.tokens, 3);
        assert_eq!(mixed.per_domain["a"].nll, 2.0);
        assert_eq!(mixed.total.tokens, 5);
        // The ensemble is never worse than its worst unit, and no better than the best.
        let (ea, eb) = (text(a.totals()).total.nll, text(b.totals()).total.nll);
        assert!(mixed.total.nll > ea && mixed.total.nll < eb);
        // A weight on one unit only is that unit.
        assert_eq!(ensemble(&[&a, &b], &[0.0, 1.0]).unwrap(), b.totals());
    }

    #[test]
    fn the_mean_of_units_is_the_weighted_mean_of_their_perplexities() {
        let a = unit(&[1.0, 1.0, 1.0, 1.0, 1.0]);
        let b = unit(&[3.0, 1.0, 1.0, 1.0, 2.0]);
        let own = |u: &TokenNll| text(u.totals());
        let units = |u: &[&TokenNll], w: &[f64]| text(mean_of_units(u, w).unwrap());
        assert_eq!(
            units(&[&a], &[1.0]).total.perplexity,
            own(&a).total.perplexity
        );
        assert_eq!(
            units(&[&b, &b], &[0.5, 0.5]).total.perplexity,
            own(&b).total.perplexity
        );
        // 3:1 → 0.75 ppl_a + 0.25 ppl_b, overall and per domain; e^1 and e^{(3+1+2)/3} on b.
        let mixed = units(&[&a, &b], &[3.0, 1.0]);
        let want = 0.75 * own(&a).total.perplexity + 0.25 * own(&b).total.perplexity;
        assert!((mixed.total.perplexity - want).abs() < 1e-12);
        let on_b = 0.75 * 1f64.exp() + 0.25 * 2f64.exp();
        assert!((mixed.per_domain["b"].perplexity - on_b).abs() < 1e-12);
        assert_eq!(mixed.per_domain["b"].tokens, 3);
        assert!((mixed.per_domain["b"].nll - 3.0 * on_b.ln()).abs() < 1e-12);
        assert!(mean_of_units(&[&a], &[1.0, 1.0]).is_err());
    }

    #[test]
    fn the_stored_form_round_trips_and_bad_files_are_refused() {
        let a = unit(&[0.3, 2.5, 1e-7, 17.0, 4.25]);
        let bytes = a.encode();
        assert_eq!(TokenNll::decode(&bytes).unwrap(), a);
        assert!(TokenNll::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(TokenNll::decode(b"MPNLL01\n").is_err());
        assert!(TokenNll::decode(&[0u8; 64]).is_err());
        let mut other = unit(&[1.0; 5]);
        if let NllLayout::Text(layout) = &mut other.layout {
            layout.sizes[0].0 = 11;
        }
        assert!(ensemble(&[&a, &other], &[1.0, 1.0]).is_err());
        assert!(mean_of_units(&[&a, &other], &[1.0, 1.0]).is_err());
        assert!(ensemble(&[&a], &[1.0, 1.0]).is_err());
        // Questions' NLLs round-trip too, and never mix with text's.
        let q = answers(&[0.5, 1.0, 2.0, 0.25, 0.25, 3.0]);
        assert_eq!(TokenNll::decode(&q.encode()).unwrap(), q);
        assert!(ensemble(&[&a, &q], &[1.0, 1.0]).is_err());
    }

    #[test]
    fn on_questions_each_choice_is_scored_by_its_tokens_mixed_probabilities() {
        let a = answers(&[0.5, 1.0, 2.0, 0.25, 0.25, 3.0]);
        let b = answers(&[2.5, 0.125, 0.125, 1.0, 1.0, 0.375]);
        // One unit, or identical ones, is that unit exactly.
        let alone = a.totals();
        assert_eq!(ensemble(&[&a], &[1.0]).unwrap(), alone);
        assert_eq!(ensemble(&[&a, &a], &[0.3, 0.7]).unwrap(), alone);
        assert_eq!(mean_of_units(&[&a], &[2.0]).unwrap(), alone);
        // By hand, 1:1: each token's NLL is −ln(½e^−x + ½e^−y); a choice's ll the sum.
        let mix = |x: f64, y: f64| -(0.5 * (-x).exp() + 0.5 * (-y).exp()).ln();
        let ll = [
            -mix(0.5, 2.5),
            -(mix(1.0, 0.125) + mix(2.0, 0.125)),
            -(mix(0.25, 1.0) + mix(0.25, 1.0)),
            -mix(3.0, 0.375),
        ];
        let r = choices(ensemble(&[&a, &b], &[1.0, 1.0]).unwrap());
        let ln2 = std::f64::consts::LN_2;
        let gold_bpb = (-ll[0] / (3.0 * ln2) + -ll[3] / (2.0 * ln2)) / 2.0;
        assert!((r.total.bits_per_byte_gold - gold_bpb).abs() < 1e-12);
        // By ll per byte: question 0's gold (choice 0) against choice 1; question 1's
        // gold (choice 1) against choice 0.
        let right = u8::from(ll[0] / 3.0 >= ll[1] / 5.0) + u8::from(ll[3] / 2.0 > ll[2] / 4.0);
        assert_eq!(r.total.accuracy, f64::from(right) / 2.0);
        assert_eq!((r.total.n, r.tokens), (2, 20));
        // The mean of units: each figure the weighted mean of the units' own.
        let (fa, fb) = (choices(a.totals()), choices(b.totals()));
        let m = choices(mean_of_units(&[&a, &b], &[3.0, 1.0]).unwrap());
        let want = 0.75 * fa.total.bits_per_byte_gold + 0.25 * fb.total.bits_per_byte_gold;
        assert!((m.total.bits_per_byte_gold - want).abs() < 1e-12);
        assert!(
            (m.per_task["t"].accuracy - (0.75 * fa.total.accuracy + 0.25 * fb.total.accuracy))
                .abs()
                < 1e-12
        );
        assert!((m.perplexity - want.exp2()).abs() < 1e-12);
    }
}
