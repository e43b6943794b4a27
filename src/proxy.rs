//! Proxies: how the unit models of a mixture stand in for a model trained on it. Each
//! proxy's scores are ordinary scores, stored under its key (the scores' `merge_method`),
//! so they are cached, swept, ranked and validated alike.

use serde::{Serialize, Serializer};

use crate::error::Error;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Proxy {
    /// The weighted parameter average of the unit models, evaluated: the paper's proxy.
    #[default]
    Average,
    /// The weighted mixture of the unit models' next-token distributions, computed from
    /// their stored per-token NLLs: no forward pass once each unit has seen the eval set.
    Ensemble,
    /// The weighted mean of the unit models' own perplexities: nothing combined, from their
    /// stored per-token NLLs. The baseline every combining proxy has to beat.
    Units,
    /// The parameter average weighted per coordinate by each unit's diagonal Fisher estimate
    /// (its final AdamW second moments); the plain average, saying so, for units without one.
    Fisher,
    /// θ_base + λ Σ α_k (θ_k − θ_base): the average's displacement from the base, scaled.
    /// λ = 1 is the average itself, and is stored as it.
    TaskVectors(Scale),
}

/// A task-vector scale λ, in hundredths (so proxies compare and hash exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scale(u16);

impl Scale {
    /// The scales validations score, from which the report picks one per eval set.
    pub const GRID: [Scale; 5] = [Scale(50), Scale(100), Scale(150), Scale(200), Scale(300)];
    pub const ONE: Scale = Scale(100);
    /// The largest scale a request may name.
    const MAX: u16 = 1000;

    pub fn value(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// λ from its decimal form: above 0, at most 10, in steps of 0.01.
    pub fn parse(text: &str) -> Option<Scale> {
        let value: f64 = text.parse().ok()?;
        let hundredths = (value * 100.0).round();
        let exact = (hundredths / 100.0 - value).abs() < 1e-9;
        (exact && hundredths >= 1.0 && hundredths <= f64::from(Scale::MAX))
            .then_some(Scale(hundredths as u16))
    }
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.value())
    }
}

/// The names a request may use, in the order error messages list them.
const NAMES: &str = "average, ensemble, units, fisher, task_vectors@<λ>, task_vectors, best";

/// A proxy as a request names it: one proxy, or one that the eval set's validations choose
/// (see [`crate::validation::choose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Named(Proxy),
    /// `task_vectors`: at the scale λ the validations report for the eval set.
    TaskVectors,
    /// `best`: the proxy with the highest ρ over the eval set's validated mixtures.
    Best,
}

impl Choice {
    /// The choice a request names (default the paper's `average`); an error lists the names.
    pub fn parse(name: Option<&str>) -> Result<Choice, Error> {
        match name {
            Some("best") => Ok(Choice::Best),
            Some("task_vectors") => Ok(Choice::TaskVectors),
            other => Proxy::parse(other).map(Choice::Named),
        }
    }
}

impl Proxy {
    /// The proxies with a fixed key (task vectors take a scale).
    pub const FIXED: [Proxy; 4] = [Proxy::Average, Proxy::Ensemble, Proxy::Units, Proxy::Fisher];

    /// The proxy's family name: `average`, `ensemble`, `fisher` or `task_vectors`.
    pub fn name(self) -> &'static str {
        match self {
            Proxy::Average => "average",
            Proxy::Ensemble => "ensemble",
            Proxy::Units => "units",
            Proxy::Fisher => "fisher",
            Proxy::TaskVectors(_) => "task_vectors",
        }
    }

    /// The name in answers and score keys: the family name, with `@λ` for task vectors
    /// (`task_vectors@1.5`); λ = 1 is the average's key.
    pub fn key(self) -> String {
        match self {
            Proxy::TaskVectors(Scale::ONE) => Proxy::Average.key(),
            Proxy::TaskVectors(scale) => format!("task_vectors@{scale}"),
            fixed => fixed.name().to_string(),
        }
    }

    /// The same proxy, with task vectors at λ = 1 as the average they equal.
    pub fn canonical(self) -> Proxy {
        match self {
            Proxy::TaskVectors(Scale::ONE) => Proxy::Average,
            other => other,
        }
    }

    /// Whether it is arithmetic on the unit models' stored per-token NLLs (no merge).
    pub fn reads_token_nll(self) -> bool {
        matches!(self, Proxy::Ensemble | Proxy::Units)
    }

    /// The proxy a key names (as [`Proxy::key`] writes it).
    pub fn from_key(key: &str) -> Option<Proxy> {
        if let Some(scale) = key.strip_prefix("task_vectors@") {
            return Scale::parse(scale).map(|s| Proxy::TaskVectors(s).canonical());
        }
        Proxy::FIXED.into_iter().find(|p| p.name() == key)
    }

    /// The proxy a request names (default `average`); an error lists the names.
    pub fn parse(name: Option<&str>) -> Result<Proxy, Error> {
        let Some(name) = name else {
            return Ok(Proxy::default());
        };
        Proxy::from_key(name).ok_or_else(|| {
            Error::invalid(
                "invalid_proxy",
                format!("proxy {name:?}: use {NAMES} (λ above 0, at most 10, in steps of 0.01)"),
            )
        })
    }
}

impl Serialize for Proxy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_unknown_ones_are_refused_with_the_list() {
        let mut all = Proxy::FIXED.to_vec();
        all.extend(
            Scale::GRID
                .iter()
                .filter(|&&s| s != Scale::ONE)
                .map(|&s| Proxy::TaskVectors(s)),
        );
        for proxy in all {
            assert_eq!(Proxy::parse(Some(&proxy.key())).unwrap(), proxy);
            let json = serde_json::to_value(proxy).unwrap();
            assert_eq!(json, proxy.key());
        }
        assert_eq!(Proxy::TaskVectors(Scale(150)).key(), "task_vectors@1.5");
        assert_eq!(Proxy::TaskVectors(Scale(50)).key(), "task_vectors@0.5");
        assert_eq!(Proxy::TaskVectors(Scale(200)).key(), "task_vectors@2");
        // λ = 1 is the average, under its key.
        assert_eq!(Proxy::TaskVectors(Scale::ONE).key(), "average");
        assert_eq!(
            Proxy::parse(Some("task_vectors@1.00")).unwrap(),
            Proxy::Average
        );
        assert_eq!(Proxy::parse(None).unwrap(), Proxy::Average);
        for bad in [
            "merge",
            "task_vectors@",
            "task_vectors@0",
            "task_vectors@-1",
            "task_vectors@1.234",
            "task_vectors@11",
            "task_vectors@nan",
        ] {
            let err = Proxy::parse(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(NAMES), "{bad}: {err}");
        }
    }
}
