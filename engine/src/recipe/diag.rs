//! Recipe diagnostics: every problem found in a recipe, each at its line and column.

use std::fmt;

/// A 1-based position in the recipe file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<&marked_yaml::Span> for Pos {
    fn from(span: &marked_yaml::Span) -> Self {
        span.start()
            .map(|m| Pos {
                line: m.line(),
                column: m.column(),
            })
            .unwrap_or_default()
    }
}

impl From<&marked_yaml::Marker> for Pos {
    fn from(m: &marked_yaml::Marker) -> Self {
        Pos {
            line: m.line(),
            column: m.column(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
}

/// A recipe that was refused, with all of its problems (sorted by position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl RecipeError {
    pub fn new(file: &str, mut diagnostics: Vec<Diagnostic>) -> Self {
        diagnostics.sort_by_key(|d| d.pos);
        diagnostics.dedup();
        Self {
            file: file.to_string(),
            diagnostics,
        }
    }

    pub fn single(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(
            file,
            vec![Diagnostic {
                pos,
                message: message.into(),
            }],
        )
    }
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.pos.line == 0 {
                write!(f, "{}: {}", self.file, d.message)?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: {}",
                    self.file, d.pos.line, d.pos.column, d.message
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for RecipeError {}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(&word.to_lowercase(), c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `, did you mean `x`?` or a list of what is allowed.
pub fn hint(word: &str, candidates: &[&str]) -> String {
    match suggest(word, candidates) {
        Some(s) => format!("; did you mean `{s}`?"),
        None => format!("; expected one of: {}", candidates.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("epoch", "epochs"), 1);
        assert_eq!(suggest("epoch", &["epochs", "seed"]), Some("epochs"));
        assert_eq!(
            suggest("batchsize", &["batch_size", "seed"]),
            Some("batch_size")
        );
        assert_eq!(suggest("zzz", &["epochs", "seed"]), None);
        assert!(hint("zzz", &["a", "b"]).contains("one of: a, b"));
    }

    #[test]
    fn display_is_one_line_per_problem_sorted() {
        let e = RecipeError::new(
            "r.yaml",
            vec![
                Diagnostic {
                    pos: Pos { line: 9, column: 3 },
                    message: "b".into(),
                },
                Diagnostic {
                    pos: Pos { line: 2, column: 5 },
                    message: "a".into(),
                },
            ],
        );
        assert_eq!(e.to_string(), "r.yaml:2:5: a\nr.yaml:9:3: b");
    }
}
