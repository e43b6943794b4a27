//! The ensemble proxy's arithmetic: a mixture scored as the mixture of its unit models'
//! next-token distributions, −ln Σ_k α_k p_k(token), from each unit's stored per-token NLLs,
//! with no forward pass.
//!
//! Per token the sum is taken as m − ln(Σ_k α_k e^{m − nll_k} / Σ_k α_k) with m the smallest
//! NLL, so it never underflows, and a mixture of one unit, or of identical units, returns
//! that unit's NLLs exactly (every term is then α_k · 1, the quotient exactly 1). The totals
//! are summed by [`Layout::totals`], as a model's own evaluation is: the ensemble of one unit
//! is that unit's score bit for bit.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::eval::{EvalResult, Layout, Totals};
use super::merge::{MergeError, normalize_weights};

/// A unit model's NLL of every predicted token of one eval set, and where each belongs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenNll {
    pub layout: Layout,
    pub nll: Vec<f32>,
}

/// What a stored file starts with: the format's name and version.
const MAGIC: &[u8; 8] = b"MPNLL01\n";

#[derive(Serialize, Deserialize)]
struct Header {
    layout: Layout,
    tokens: usize,
}

impl TokenNll {
    /// The model's own totals.
    pub fn totals(&self) -> EvalResult {
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

/// The ensemble of `units` with `weights` (normalised here): its totals on their eval set.
/// The units must share one layout (one eval set, tokenizer and context).
pub fn ensemble(units: &[&TokenNll], weights: &[f64]) -> Result<EvalResult, MergeError> {
    if units.len() != weights.len() {
        return Err(MergeError::WeightCount {
            inputs: units.len(),
            weights: weights.len(),
        });
    }
    let weights = normalize_weights(weights)?;
    let layout = &units[0].layout;
    if let Some(k) = units.iter().position(|u| u.layout != *layout) {
        return Err(MergeError::Mismatch {
            path: format!("unit {k}"),
            first: "unit 0".into(),
            message: "per-token NLLs of another eval set or tokenizer".into(),
        });
    }
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

/// The `units` proxy: the weighted mean of `units`' own perplexities (weights normalised
/// here), overall and per domain, each as the totals that perplexity implies over the eval
/// set's tokens. The mixture's unit models are not combined at all: this is the baseline a
/// combining proxy has to beat. One unit gives its own perplexities exactly.
pub fn mean_of_units(units: &[&TokenNll], weights: &[f64]) -> Result<EvalResult, MergeError> {
    if units.len() != weights.len() {
        return Err(MergeError::WeightCount {
            inputs: units.len(),
            weights: weights.len(),
        });
    }
    let weights = normalize_weights(weights)?;
    let own: Vec<EvalResult> = units.iter().map(|u| u.totals()).collect();
    let mean = |ppl: &dyn Fn(&EvalResult) -> f64| -> f64 {
        own.iter().zip(&weights).map(|(r, w)| w * ppl(r)).sum()
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
    Ok(EvalResult {
        total: like(&first.total, mean(&|r| r.total.perplexity)),
        macro_perplexity: per_domain.values().map(|t| t.perplexity).sum::<f64>() / n,
        macro_bits_per_byte: per_domain.values().map(|t| t.bits_per_byte).sum::<f64>() / n,
        per_domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(nll: &[f32]) -> TokenNll {
        TokenNll {
            layout: Layout {
                domains: vec!["a".into(), "b".into()],
                sizes: vec![(10, 1), (7, 2)],
                windows: vec![(1, 2), (0, 2), (1, 1)],
            },
            nll: nll.to_vec(),
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
        let mixed = ensemble(&[&a, &b], &[3.0, 1.0]).unwrap();
        let token0 = -(0.75 * (-1.0f64).exp() + 0.25 * (-3.0f64).exp()).ln();
        // Window (b, 2 tokens) holds tokens 0 and 1; window (b, 1 token) holds token 4.
        let b_domain = &mixed.per_domain["b"];
        assert!((b_domain.nll - (token0 + 1.0 + 1.0)).abs() < 1e-12);
        assert_eq!(b_domain.tokens, 3);
        assert_eq!(mixed.per_domain["a"].nll, 2.0);
        assert_eq!(mixed.total.tokens, 5);
        // The ensemble is never worse than its worst unit, and no better than the best.
        let (ea, eb) = (a.totals().total.nll, b.totals().total.nll);
        assert!(mixed.total.nll > ea && mixed.total.nll < eb);
        // A weight on one unit only is that unit.
        assert_eq!(ensemble(&[&a, &b], &[0.0, 1.0]).unwrap(), b.totals());
    }

    #[test]
    fn the_mean_of_units_is_the_weighted_mean_of_their_perplexities() {
        let a = unit(&[1.0, 1.0, 1.0, 1.0, 1.0]);
        let b = unit(&[3.0, 1.0, 1.0, 1.0, 2.0]);
        let own = |u: &TokenNll| u.totals();
        assert_eq!(
            mean_of_units(&[&a], &[1.0]).unwrap().total.perplexity,
            own(&a).total.perplexity
        );
        assert_eq!(
            mean_of_units(&[&b, &b], &[0.5, 0.5])
                .unwrap()
                .total
                .perplexity,
            own(&b).total.perplexity
        );
        // 3:1 → 0.75 ppl_a + 0.25 ppl_b, overall and per domain; e^1 and e^{(3+1+2)/3} on b.
        let mixed = mean_of_units(&[&a, &b], &[3.0, 1.0]).unwrap();
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
        other.layout.sizes[0].0 = 11;
        assert!(ensemble(&[&a, &other], &[1.0, 1.0]).is_err());
        assert!(ensemble(&[&a], &[1.0, 1.0]).is_err());
    }
}
