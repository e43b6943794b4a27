//! Mixtures: a set of distinct partitions with non-negative weights. The canonical form sorts
//! the partitions and normalises the weights to sum 1, so the same mixture asked for in any
//! order or scale has one key, and one cached score.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// Equal weights: the paper's default.
    Uniform,
    /// Proportional to each partition's size in tokens.
    Tokens,
    /// Given explicitly by the caller.
    Explicit,
}

/// One partition of a mixture with its weight: the members of a canonical mixture are the
/// same values in a request, a job's payload and a stored score (`[{"partition", "weight"}]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub partition: Uuid,
    pub weight: f64,
}

impl Member {
    /// The members of a stored mixture (none when it does not parse).
    pub fn list(mixture: &serde_json::Value) -> Vec<Member> {
        Vec::<Member>::deserialize(mixture).unwrap_or_default()
    }
}

impl Weighting {
    /// The name in score keys and answers (`uniform`, `tokens`, `explicit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Weighting::Uniform => "uniform",
            Weighting::Tokens => "tokens",
            Weighting::Explicit => "explicit",
        }
    }

    /// A weighting a request names (`uniform` or `tokens`; explicit weighting is asked for
    /// by giving weights); an error says what to use instead.
    pub fn parse(name: &str) -> Result<Weighting, String> {
        match name {
            "uniform" => Ok(Weighting::Uniform),
            "tokens" => Ok(Weighting::Tokens),
            other => Err(format!("weighting {other:?}: use uniform or tokens")),
        }
    }
}

/// A mixture as a request names it: partitions by name or id, with weights (explicit
/// weighting) or a weighting (`uniform`, the default, or `tokens`). The one request shape of
/// a mixture; `resolve::Partitions::mixture` turns it into a [`Mixture`] of rows.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MixtureRequest {
    pub partitions: Vec<String>,
    pub weights: Option<Vec<f64>>,
    pub weighting: Option<String>,
}

impl MixtureRequest {
    /// From a query string's `partitions=a,b&weights=0.5,0.5&weighting=..`.
    pub fn from_query(
        partitions: &str,
        weights: Option<&str>,
        weighting: Option<&str>,
    ) -> Result<MixtureRequest, Error> {
        let partitions: Vec<String> = partitions
            .split(',')
            .map(|p| p.trim().to_string())
            .collect();
        if partitions.iter().any(String::is_empty) {
            return Err(Error::invalid(
                "invalid_partitions",
                "partitions is a comma-separated list of names or ids",
            ));
        }
        let weights = match weights {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(|w| w.trim().parse::<f64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        Error::invalid(
                            "invalid_weights",
                            format!("weights {list:?} are not numbers"),
                        )
                    })?,
            ),
        };
        Ok(MixtureRequest {
            partitions,
            weights,
            weighting: weighting.map(str::to_string),
        })
    }

    /// The weighting asked for: explicit when weights are given, uniform when nothing is.
    pub fn weighting(&self) -> Result<Weighting, Error> {
        let named = match &self.weighting {
            None => None,
            Some(name) => {
                Some(Weighting::parse(name).map_err(|e| Error::invalid("invalid_weighting", e))?)
            }
        };
        match (named, &self.weights) {
            (None, None) => Ok(Weighting::Uniform),
            (None, Some(_)) => Ok(Weighting::Explicit),
            (Some(weighting), None) => Ok(weighting),
            (Some(_), Some(_)) => Err(Error::invalid(
                "invalid_weights",
                "give either weights or a weighting, not both",
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mixture {
    pub members: Vec<Member>,
    pub weighting: Weighting,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum MixtureError {
    #[error("a mixture needs at least one partition")]
    Empty,
    #[error("partition {0} appears more than once")]
    Repeated(Uuid),
    #[error("{partitions} partitions but {weights} weights")]
    WeightCount { partitions: usize, weights: usize },
    #[error("weight {value} of partition {partition} must be finite and non-negative")]
    BadWeight { partition: Uuid, value: f64 },
    #[error("the weights sum to zero")]
    ZeroWeights,
}

impl Mixture {
    /// Validates and canonicalises. `weights` are given for `Explicit` weighting, partition
    /// sizes in tokens for `Tokens`, and nothing for `Uniform`.
    pub fn new(
        partitions: &[Uuid],
        weights: Option<&[f64]>,
        weighting: Weighting,
    ) -> Result<Self, MixtureError> {
        if partitions.is_empty() {
            return Err(MixtureError::Empty);
        }
        let weights: Vec<f64> = match weights {
            Some(w) if w.len() != partitions.len() => {
                return Err(MixtureError::WeightCount {
                    partitions: partitions.len(),
                    weights: w.len(),
                });
            }
            Some(w) => w.to_vec(),
            None => vec![1.0; partitions.len()],
        };
        let mut members: Vec<Member> = partitions
            .iter()
            .zip(&weights)
            .map(|(&partition, &weight)| Member { partition, weight })
            .collect();
        members.sort_by_key(|m| m.partition);
        if let Some(pair) = members
            .windows(2)
            .find(|p| p[0].partition == p[1].partition)
        {
            return Err(MixtureError::Repeated(pair[0].partition));
        }
        if let Some(m) = members
            .iter()
            .find(|m| !(m.weight.is_finite() && m.weight >= 0.0))
        {
            return Err(MixtureError::BadWeight {
                partition: m.partition,
                value: m.weight,
            });
        }
        let sum: f64 = members.iter().map(|m| m.weight).sum();
        if sum == 0.0 {
            return Err(MixtureError::ZeroWeights);
        }
        members.iter_mut().for_each(|m| m.weight /= sum);
        Ok(Mixture { members, weighting })
    }

    /// `<uuid>:<weight>,…` with weights to 12 significant digits, so that weights equal up
    /// to floating-point noise (1/3 computed two ways) share a key.
    pub fn key(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}:{:.12e}", m.partition, m.weight))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How many subsets of `n` items have a size in `min..=max` (saturating).
pub fn count_subsets(n: usize, min: usize, max: usize) -> u64 {
    (min..=max.min(n))
        .map(|k| binomial(n as u64, k as u64))
        .fold(0u64, u64::saturating_add)
}

fn binomial(n: u64, k: u64) -> u64 {
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for i in 0..k {
        c = c * (n - i) as u128 / (i + 1) as u128;
        if c > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    c as u64
}

/// The subsets of `0..n` with a size in `min..=max`, as sorted index lists: by size, then
/// in lexicographic order, so consecutive subsets share most members.
pub fn subsets(n: usize, min: usize, max: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for k in min.max(1)..=max.min(n) {
        let mut pick: Vec<usize> = (0..k).collect();
        loop {
            out.push(pick.clone());
            // The rightmost index that can still move right, moved; the ones after it reset.
            let Some(i) = (0..k).rev().find(|&i| pick[i] < n - k + i) else {
                break;
            };
            pick[i] += 1;
            for j in i + 1..k {
                pick[j] = pick[j - 1] + 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_in_a_size_range_are_all_there_once_and_counted() {
        let all = subsets(8, 1, 8);
        assert_eq!(all.len(), 255);
        assert_eq!(count_subsets(8, 1, 8), 255);
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 255);
        assert!(all.iter().all(|s| s.windows(2).all(|w| w[0] < w[1])));
        assert_eq!(
            subsets(4, 2, 2),
            vec![
                vec![0, 1],
                vec![0, 2],
                vec![0, 3],
                vec![1, 2],
                vec![1, 3],
                vec![2, 3]
            ]
        );
        assert_eq!(subsets(8, 1, 3).len() as u64, count_subsets(8, 1, 3));
        assert_eq!(count_subsets(8, 1, 3), 8 + 28 + 56);
        assert_eq!(count_subsets(100, 1, 100), u64::MAX);
        assert_eq!(count_subsets(40, 20, 20), 137_846_528_820);
    }

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    #[test]
    fn order_and_scale_do_not_change_the_key() {
        let p = ids(3);
        let a = Mixture::new(&p, Some(&[1.0, 2.0, 1.0]), Weighting::Explicit).unwrap();
        let b = Mixture::new(
            &[p[2], p[0], p[1]],
            Some(&[0.5, 0.5, 1.0]),
            Weighting::Explicit,
        )
        .unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(
            a.members.iter().map(|m| m.weight).collect::<Vec<_>>(),
            vec![0.25, 0.5, 0.25]
        );
        let uniform = Mixture::new(&p, None, Weighting::Uniform).unwrap();
        let thirds = Mixture::new(&p, Some(&[0.1 + 0.2, 0.3, 0.3]), Weighting::Explicit).unwrap();
        assert_eq!(
            uniform.key(),
            thirds.key(),
            "floating-point noise does not split the cache"
        );
    }

    #[test]
    fn invalid_mixtures_say_what_is_wrong() {
        let p = ids(2);
        assert_eq!(
            Mixture::new(&[], None, Weighting::Uniform),
            Err(MixtureError::Empty)
        );
        assert_eq!(
            Mixture::new(&[p[0], p[0]], None, Weighting::Uniform),
            Err(MixtureError::Repeated(p[0]))
        );
        assert!(matches!(
            Mixture::new(&p, Some(&[1.0]), Weighting::Explicit),
            Err(MixtureError::WeightCount { .. })
        ));
        assert!(matches!(
            Mixture::new(&p, Some(&[1.0, -1.0]), Weighting::Explicit),
            Err(MixtureError::BadWeight { .. })
        ));
        assert!(matches!(
            Mixture::new(&p, Some(&[f64::NAN, 1.0]), Weighting::Explicit),
            Err(MixtureError::BadWeight { .. })
        ));
        assert_eq!(
            Mixture::new(&p, Some(&[0.0, 0.0]), Weighting::Explicit),
            Err(MixtureError::ZeroWeights)
        );
    }
}
