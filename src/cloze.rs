//! Cloze tasks built from real text, for pools with no benchmark at hand: per domain, a
//! passage's opening is the context and its true continuation is the gold choice among the
//! continuations of other documents of the same domain at the same place. Deterministic from
//! a seed; one task per domain.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::engine::choices::Question;

#[derive(Debug, Clone)]
pub struct ClozeConfig {
    /// Questions per domain (fewer where the domain has too few long documents).
    pub questions: usize,
    /// About how many bytes of a passage make the context (cut at a space).
    pub context_bytes: usize,
    /// About how many bytes make a continuation (cut at a space).
    pub continuation_bytes: usize,
    /// Choices per question: the gold one and the rest from other documents.
    pub choices: usize,
    pub seed: u64,
}

impl Default for ClozeConfig {
    fn default() -> Self {
        ClozeConfig {
            questions: 50,
            context_bytes: 240,
            continuation_bytes: 40,
            choices: 4,
            seed: 0,
        }
    }
}

/// The index of the first space at or after `at` in `text` (or its end).
fn cut(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    text[at..].find(' ').map_or(text.len(), |i| at + i)
}

/// A document's opening and its continuation: the context up to a space near
/// `context_bytes`, then the continuation (with its leading space) up to a space near
/// `continuation_bytes` further. `None` for a document too short, or without a space within
/// twice either length (a long run without spaces: a URL, encoded data).
fn split(text: &str, config: &ClozeConfig) -> Option<(String, String)> {
    let start = cut(text, config.context_bytes);
    let end = cut(text, start + 1 + config.continuation_bytes);
    let (context, continuation) = (&text[..start], &text[start..end]);
    let words = continuation.split_whitespace().count();
    (start < text.len()
        && start <= 2 * config.context_bytes
        && end - start <= 2 * config.continuation_bytes + 1
        && context.trim().len() >= config.context_bytes / 2
        && words >= 3)
        .then(|| (context.to_string(), continuation.to_string()))
}

/// `text` cut into passages of about `bytes` bytes each (at spaces, leading whitespace
/// dropped), so that one long document gives several questions' passages.
pub fn passages(text: &str, bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = cut(text, start + bytes.max(1));
        out.push(text[start..end].trim_start().to_string());
        start = end;
    }
    out
}

/// Questions over `domains` (each a name and its documents' texts), the task of each its
/// domain's name.
pub fn build(domains: &[(String, Vec<String>)], config: &ClozeConfig) -> Vec<Question> {
    let mut out = Vec::new();
    for (d, (name, docs)) in domains.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ (d as u64).wrapping_mul(0x9e37));
        let mut usable: Vec<(String, String)> =
            docs.iter().filter_map(|t| split(t, config)).collect();
        usable.shuffle(&mut rng);
        let others = config.choices.saturating_sub(1);
        // Each question takes one document as its own and `others` as distractors.
        let mut used = 0;
        let mut asked = 0;
        while asked < config.questions && used + 1 + others <= usable.len() {
            let (context, gold) = usable[used].clone();
            let mut choices: Vec<String> = usable[used + 1..used + 1 + others]
                .iter()
                .map(|(_, c)| c.clone())
                .filter(|c| *c != gold)
                .collect();
            used += 1 + others;
            if choices.len() < others {
                continue;
            }
            let at = rng.random_range(0..=choices.len());
            choices.insert(at, gold);
            out.push(Question {
                context,
                choices,
                gold: at,
                task: name.clone(),
            });
            asked += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(n: usize, words: &str) -> Vec<String> {
        (0..n)
            .map(|i| {
                format!("Document {i} begins here and {words} goes on for a while. ").repeat(12)
            })
            .collect()
    }

    #[test]
    fn passages_cut_a_text_at_spaces_and_keep_all_of_it() {
        let text = "one two three four five six seven eight nine ten";
        let pieces = passages(text, 8);
        assert_eq!(
            pieces,
            [
                "one two three",
                "four five",
                "six seven",
                "eight nine",
                "ten"
            ]
        );
        assert_eq!(pieces.join(" "), text);
        assert_eq!(passages("", 8), Vec::<String>::new());
        // No space after the cut: the rest is one passage.
        assert_eq!(passages("abcdefghijkl", 4), ["abcdefghijkl"]);
    }

    #[test]
    fn questions_take_a_passage_and_its_true_continuation_among_others() {
        let domains = vec![
            ("alpha".to_string(), docs(30, "the river")),
            ("beta".to_string(), docs(9, "a mountain")),
        ];
        let config = ClozeConfig {
            questions: 5,
            ..ClozeConfig::default()
        };
        let questions = build(&domains, &config);
        // beta has 9 documents: two questions of four.
        let per = |task: &str| questions.iter().filter(|q| q.task == task).count();
        assert_eq!((per("alpha"), per("beta")), (5, 2));
        for q in &questions {
            assert_eq!(q.choices.len(), 4);
            let (_, texts) = domains.iter().find(|(n, _)| *n == q.task).unwrap();
            // The gold choice continues the context in some document; no other one does.
            let continues = |c: &String| {
                texts
                    .iter()
                    .any(|t| t.starts_with(&format!("{}{c}", q.context)))
            };
            assert!(continues(&q.choices[q.gold]), "{q:?}");
            for (k, c) in q.choices.iter().enumerate() {
                assert!(
                    c.starts_with(' ') && c.split_whitespace().count() >= 3,
                    "{c:?}"
                );
                assert!(k == q.gold || !continues(c), "{q:?}");
            }
        }
        // A passage with no space for long is not asked about.
        let unbroken = format!("{}a b {} c d e", "word ".repeat(50), "x".repeat(300));
        assert!(split(&unbroken, &config).is_none());
        // The same seed, the same questions; another seed, others.
        assert_eq!(build(&domains, &config), questions);
        let other = build(&domains, &ClozeConfig { seed: 1, ..config });
        assert_ne!(other, questions);
        assert!(
            questions
                .iter()
                .map(|q| q.gold)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
    }
}
