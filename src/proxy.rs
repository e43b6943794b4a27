//! Proxies: how the unit models of a mixture stand in for a model trained on it. Each
//! proxy's scores are ordinary scores, stored under its name (the scores' `merge_method`),
//! so they are cached, swept, ranked and validated alike.

use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Proxy {
    /// The weighted parameter average of the unit models, evaluated: the paper's proxy.
    #[default]
    Average,
    /// The weighted mixture of the unit models' next-token distributions, computed from
    /// their stored per-token NLLs: no forward pass once each unit has seen the eval set.
    Ensemble,
    /// The parameter average weighted per coordinate by each unit's diagonal Fisher estimate
    /// (its final AdamW second moments); the plain average, saying so, for units without one.
    Fisher,
}

impl Proxy {
    pub const ALL: [Proxy; 3] = [Proxy::Average, Proxy::Ensemble, Proxy::Fisher];

    /// The name in requests, answers and score keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Proxy::Average => "average",
            Proxy::Ensemble => "ensemble",
            Proxy::Fisher => "fisher",
        }
    }

    /// The proxy a request names (default `average`); an error lists the names.
    pub fn parse(name: Option<&str>) -> Result<Proxy, Error> {
        let Some(name) = name else {
            return Ok(Proxy::default());
        };
        Proxy::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Proxy::ALL.iter().map(|p| p.as_str()).collect();
                Error::invalid(
                    "invalid_proxy",
                    format!("proxy {name:?}: use {}", names.join(", ")),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused_with_the_list() {
        for proxy in Proxy::ALL {
            assert_eq!(Proxy::parse(Some(proxy.as_str())).unwrap(), proxy);
            let json = serde_json::to_value(proxy).unwrap();
            assert_eq!(json, proxy.as_str());
        }
        assert_eq!(Proxy::parse(None).unwrap(), Proxy::Average);
        let err = Proxy::parse(Some("merge")).unwrap_err().to_string();
        assert!(err.contains("average, ensemble, fisher"), "{err}");
    }
}
