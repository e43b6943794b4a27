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
use serde_json::Value;
use tch::Device;

use super::checkpoint::LoadedModel;
use super::eval::{DEFAULT_DOMAIN, EvalConfig, position_nll};

/// One question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub context: String,
    pub choices: Vec<String>,
    /// The index of the correct choice.
    pub gold: usize,
    pub task: String,
}

/// The record shapes a choices file may be written in; every record of a file has the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `{"context", "choices": [str], "gold": int, "task"?}`, read as given.
    Native,
    /// lm-eval-harness: `{"query", "choices": [str], "gold": int}`, read as given.
    Harness,
    /// ARC: `{"question", "choices": {"text": [str], "label": [str]}, "answerKey"}`; the
    /// context becomes `Question: {question}\nAnswer:` and each choice ` {text}`.
    Arc,
    /// HellaSwag: `{"ctx", "endings": [str], "label"}`; each choice ` {ending}`.
    Hellaswag,
    /// PIQA: `{"goal", "sol1", "sol2", "label"}`; the context becomes
    /// `Question: {goal}\nAnswer:` and the choices ` {sol1}`, ` {sol2}`.
    Piqa,
}

impl Shape {
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Native => "native",
            Shape::Harness => "lm_eval_harness",
            Shape::Arc => "arc",
            Shape::Hellaswag => "hellaswag",
            Shape::Piqa => "piqa",
        }
    }

    /// The shape a record's fields say, if any.
    fn of(record: &serde_json::Map<String, Value>) -> Option<Shape> {
        let has = |k: &str| record.contains_key(k);
        if has("context") && has("choices") && has("gold") {
            Some(Shape::Native)
        } else if has("query") && has("choices") && has("gold") {
            Some(Shape::Harness)
        } else if has("question") && has("choices") && has("answerKey") {
            Some(Shape::Arc)
        } else if has("ctx") && has("endings") && has("label") {
            Some(Shape::Hellaswag)
        } else if has("goal") && has("sol1") && has("sol2") && has("label") {
            Some(Shape::Piqa)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChoicesError {
    #[error("line {line}: {message}")]
    Record { line: usize, message: String },
    #[error("no questions")]
    Empty,
    #[error("{0}")]
    Tokenize(String),
    #[error("a choice of {tokens} tokens does not fit the model's window of {window}")]
    TooLong { tokens: usize, window: usize },
}

/// Whether `bytes` (decompressed) look like a choices file: its first record has one of the
/// shapes' fields.
pub fn looks_like_choices(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v.as_object().and_then(Shape::of))
        .is_some()
}

/// Reads a JSONL choices file: every question, and the shape its records are written in. A
/// record of no shape, of another shape than the first, or with a gold index out of range or
/// an empty choice is refused with its line number.
pub fn parse(bytes: &[u8]) -> Result<(Vec<Question>, Shape), ChoicesError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ChoicesError::Record {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not UTF-8".into(),
    })?;
    let mut shape: Option<Shape> = None;
    let mut questions = Vec::new();
    for (i, line) in text.lines().enumerate() {
        questions.extend(parse_line(line, i + 1, &mut shape)?);
    }
    match shape {
        Some(shape) => Ok((questions, shape)),
        None => Err(ChoicesError::Empty),
    }
}

/// One line of a choices file (`None` for a blank one); `shape` is the file's, set by its
/// first record.
pub fn parse_line(
    line: &str,
    line_no: usize,
    shape: &mut Option<Shape>,
) -> Result<Option<Question>, ChoicesError> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let bad = |message: String| ChoicesError::Record {
        line: line_no,
        message,
    };
    let value: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let record = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let this = Shape::of(record).ok_or_else(|| {
        bad("not a question: expected context/choices/gold, query/choices/gold (lm-eval-harness), question/choices/answerKey (ARC), ctx/endings/label (HellaSwag) or goal/sol1/sol2/label (PIQA)".into())
    })?;
    match *shape {
        Some(first) if first != this => {
            return Err(bad(format!(
                "a record of the {} shape in a file of the {} shape",
                this.as_str(),
                first.as_str()
            )));
        }
        _ => *shape = Some(this),
    }
    let question = read(this, record).map_err(bad)?;
    if question.choices.len() < 2 {
        return Err(bad(format!(
            "{} choice(s): a question needs at least 2",
            question.choices.len()
        )));
    }
    if question.gold >= question.choices.len() {
        return Err(bad(format!(
            "gold {} is out of range for {} choices",
            question.gold,
            question.choices.len()
        )));
    }
    if let Some(k) = question.choices.iter().position(|c| c.is_empty()) {
        return Err(bad(format!("choice {k} is empty")));
    }
    Ok(Some(question))
}

/// One record of `shape` as a question (fields checked; the gold index not yet).
fn read(shape: Shape, r: &serde_json::Map<String, Value>) -> Result<Question, String> {
    let text = |k: &str| -> Result<String, String> {
        r[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{k} is not a string"))
    };
    let texts = |v: &Value, k: &str| -> Result<Vec<String>, String> {
        v.as_array()
            .and_then(|a| a.iter().map(|c| c.as_str().map(str::to_string)).collect())
            .ok_or_else(|| format!("{k} is not a list of strings"))
    };
    // An index given as a number or as a string of digits.
    let index = |k: &str| -> Result<usize, String> {
        match &r[k] {
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("{k} is not an index"))
    };
    let task = match r.get("task") {
        None | Some(Value::Null) => DEFAULT_DOMAIN.to_string(),
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err("task is not a non-empty string".into()),
    };
    let spaced = |c: Vec<String>| c.into_iter().map(|c| format!(" {c}")).collect();
    Ok(match shape {
        Shape::Native => Question {
            context: text("context")?,
            choices: texts(&r["choices"], "choices")?,
            gold: index("gold")?,
            task,
        },
        Shape::Harness => Question {
            context: text("query")?,
            choices: texts(&r["choices"], "choices")?,
            gold: index("gold")?,
            task,
        },
        Shape::Arc => {
            let choices = &r["choices"];
            let labels = texts(&choices["label"], "choices.label")?;
            let options = texts(&choices["text"], "choices.text")?;
            if labels.len() != options.len() {
                return Err(format!(
                    "choices has {} labels for {} texts",
                    labels.len(),
                    options.len()
                ));
            }
            let key = text("answerKey")?;
            Question {
                context: format!("Question: {}\nAnswer:", text("question")?),
                choices: spaced(options),
                gold: labels
                    .iter()
                    .position(|l| *l == key)
                    .ok_or_else(|| format!("answerKey {key:?} is none of the labels {labels:?}"))?,
                task,
            }
        }
        Shape::Hellaswag => Question {
            context: text("ctx")?,
            choices: spaced(texts(&r["endings"], "endings")?),
            gold: index("label")?,
            task,
        },
        Shape::Piqa => Question {
            context: format!("Question: {}\nAnswer:", text("goal")?),
            choices: spaced(vec![text("sol1")?, text("sol2")?]),
            gold: index("label")?,
            task,
        },
    })
}

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
    /// Per question: its task's index, its gold index and each choice's UTF-8 bytes.
    questions: Vec<(usize, usize, Vec<usize>)>,
    tasks: Vec<String>,
    /// Token positions per batch (the text evaluation's batch of full windows).
    batch_tokens: usize,
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
                sequences.push(Sequence {
                    ids,
                    choice_tokens: choice.len(),
                    question: q as u32,
                    choice: c as u32,
                });
            }
            let bytes = question.choices.iter().map(String::len).collect();
            meta.push((task, question.gold, bytes));
        }
        if questions.is_empty() {
            return Err(ChoicesError::Empty);
        }
        sequences.sort_by_key(|s| std::cmp::Reverse(s.ids.len()));
        Ok(PreparedChoices {
            sequences,
            questions: meta,
            tasks,
            batch_tokens: config.batch_size.max(1) * window,
        })
    }

    /// Every choice's log-likelihood, by question and choice.
    pub fn log_likelihoods(&self, model: &LoadedModel) -> Vec<Vec<f64>> {
        let mut ll: Vec<Vec<f64>> = self
            .questions
            .iter()
            .map(|(_, _, bytes)| vec![0.0; bytes.len()])
            .collect();
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
                    let sum: f64 = nll[end - s.choice_tokens..end]
                        .iter()
                        .map(|&x| x as f64)
                        .sum();
                    ll[s.question as usize][s.choice as usize] = -sum;
                }
                start += batch.len();
            }
        });
        ll
    }

    /// Tokens a scoring reads.
    pub fn tokens(&self) -> u64 {
        self.sequences.iter().map(|s| s.ids.len() as u64 - 1).sum()
    }

    /// The model's figures on the set.
    pub fn evaluate(&self, model: &LoadedModel) -> ChoiceResult {
        self.score(&self.log_likelihoods(model))
    }

    /// The figures of given log-likelihoods (by question and choice).
    pub fn score(&self, ll: &[Vec<f64>]) -> ChoiceResult {
        // Per task: Σ bits per byte of gold, correct by ll per byte, correct by ll, n.
        let mut sums = vec![(0.0f64, 0u64, 0u64, 0u64); self.tasks.len()];
        for ((task, gold, bytes), ll) in self.questions.iter().zip(ll) {
            let best = |value: &dyn Fn(usize) -> f64| -> usize {
                (1..ll.len()).fold(0, |b, k| if value(k) > value(b) { k } else { b })
            };
            let s = &mut sums[*task];
            s.0 += -ll[*gold] / (bytes[*gold] as f64 * std::f64::consts::LN_2);
            s.1 += u64::from(best(&|k| ll[k] / bytes[k] as f64) == *gold);
            s.2 += u64::from(best(&|k| ll[k]) == *gold);
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
            tokens: self.tokens(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shape_is_read_with_its_conventions() {
        let native = br#"{"context": "The capital of France is", "choices": [" Paris", " Rome"], "gold": 0, "task": "geo"}"#;
        let (q, shape) = parse(native).unwrap();
        assert_eq!(shape, Shape::Native);
        assert_eq!(q[0].choices[0], " Paris");
        assert_eq!(q[0].task, "geo");

        let harness = br#"{"query": "2 + 2 =", "choices": [" 3", " 4"], "gold": 1}"#;
        let (q, shape) = parse(harness).unwrap();
        assert_eq!(
            (shape, q[0].gold, q[0].task.as_str()),
            (Shape::Harness, 1, "default")
        );

        let arc = br#"{"id": "x", "question": "Which is a metal?", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]}, "answerKey": "B"}"#;
        let (q, shape) = parse(arc).unwrap();
        assert_eq!(shape, Shape::Arc);
        assert_eq!(q[0].context, "Question: Which is a metal?\nAnswer:");
        assert_eq!(q[0].choices, [" wood", " iron"]);
        assert_eq!(q[0].gold, 1);

        let hellaswag = br#"{"ctx": "He picks up the ball and", "endings": ["throws it.", "eats it."], "label": "0"}"#;
        let (q, shape) = parse(hellaswag).unwrap();
        assert_eq!((shape, q[0].gold), (Shape::Hellaswag, 0));
        assert_eq!(q[0].choices[1], " eats it.");

        let piqa =
            br#"{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "freeze it", "label": 0}"#;
        let (q, shape) = parse(piqa).unwrap();
        assert_eq!(shape, Shape::Piqa);
        assert_eq!(q[0].context, "Question: Open a jar\nAnswer:");
        assert_eq!(q[0].choices, [" twist the lid", " freeze it"]);
    }

    /// Three questions in two tasks, with log-likelihoods given: each figure by hand.
    #[test]
    fn the_figures_by_hand() {
        let prepared = PreparedChoices {
            sequences: Vec::new(),
            questions: vec![
                (0, 0, vec![2, 4]),
                (0, 1, vec![1, 1, 1]),
                (1, 0, vec![3, 3]),
            ],
            tasks: vec!["a".into(), "b".into()],
            batch_tokens: 1,
        };
        let ll = vec![
            // Per byte −1 and −0.75: wrong by ll per byte, right by raw ll.
            vec![-2.0, -3.0],
            // A tie between choices 1 and 2 goes to the lowest index: right both ways.
            vec![-5.0, -1.0, -1.0],
            // Right both ways.
            vec![-3.0, -6.0],
        ];
        let r = prepared.score(&ll);
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

    #[test]
    fn bad_records_are_refused_by_line() {
        let line_of = |text: &str| match parse(text.as_bytes()) {
            Err(ChoicesError::Record { line, message }) => (line, message),
            other => panic!("{other:?}"),
        };
        let good = r#"{"context": "a", "choices": [" b", " c"], "gold": 0}"#;
        for (bad, says) in [
            (
                r#"{"context": "a", "choices": [" b", " c"], "gold": 2}"#,
                "out of range",
            ),
            (
                r#"{"context": "a", "choices": [" b"], "gold": 0}"#,
                "at least 2",
            ),
            (
                r#"{"context": "a", "choices": [" b", ""], "gold": 0}"#,
                "empty",
            ),
            (r#"{"text": "just text"}"#, "not a question"),
            (
                r#"{"context": 3, "choices": [" b", " c"], "gold": 0}"#,
                "not a string",
            ),
            (
                r#"{"context": "a", "choices": [" b", " c"], "gold": "x"}"#,
                "not an index",
            ),
            (
                r#"{"query": "a", "choices": [" b", " c"], "gold": 0}"#,
                "lm_eval_harness shape in a file of the native",
            ),
            ("not json", "not JSON"),
        ] {
            let (line, message) = line_of(&format!("{good}\n\n{bad}\n"));
            assert_eq!(line, 3, "{bad}");
            assert!(message.contains(says), "{bad}: {message}");
        }
        let arc = r#"{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}"#;
        assert!(line_of(arc).1.contains("none of the labels"));
        assert_eq!(parse(b"\n\n"), Err(ChoicesError::Empty));
        assert!(looks_like_choices(good.as_bytes()));
        assert!(!looks_like_choices(br#"{"text": "a document"}"#));
    }
}
