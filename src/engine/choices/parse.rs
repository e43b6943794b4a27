//! Reading a choices file: one question per JSON line, in any of the shapes such sets are
//! found in ([`Shape`]); a record of none of them, or a gold index out of range, is refused
//! with its line number.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::eval::DEFAULT_DOMAIN;

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
