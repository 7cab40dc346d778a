//! Recipe diagnostics: every problem found in a recipe, each at its line and column.

use std::fmt;

/// A 1-based position in one of the recipe's sources: source 0 is the recipe file, source
/// k ≥ 1 the k-th `--set` argument of the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub source: usize,
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// A position in the recipe file.
    pub fn at(line: usize, column: usize) -> Self {
        Pos {
            source: 0,
            line,
            column,
        }
    }
}

impl From<&marked_yaml::Span> for Pos {
    fn from(span: &marked_yaml::Span) -> Self {
        span.start().map(Pos::from).unwrap_or_default()
    }
}

impl From<&marked_yaml::Marker> for Pos {
    fn from(m: &marked_yaml::Marker) -> Self {
        Pos {
            source: m.source(),
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
    /// How to name source k ≥ 1 in messages (`--set PATH=VALUE`); source 0 is `file`.
    pub sources: Vec<String>,
    pub diagnostics: Vec<Diagnostic>,
}

impl RecipeError {
    pub fn new(file: &str, diagnostics: Vec<Diagnostic>) -> Self {
        Self::with_sources(file, Vec::new(), diagnostics)
    }

    /// A value written once (in `defaults:`, a `matrix:` list or a `--set`) is checked once
    /// per stage that inherits it; the same problem at the same place is reported once,
    /// whichever stage's name the message carries.
    pub fn with_sources(
        file: &str,
        sources: Vec<String>,
        mut diagnostics: Vec<Diagnostic>,
    ) -> Self {
        diagnostics.sort_by_key(|d| d.pos);
        let mut seen = std::collections::HashSet::new();
        diagnostics.retain(|d| {
            let tail = d
                .message
                .split_once(": ")
                .map_or(d.message.as_str(), |x| x.1);
            seen.insert((d.pos, tail.to_string()))
        });
        Self {
            file: file.to_string(),
            sources,
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
            if d.pos.source > 0 {
                let name = self
                    .sources
                    .get(d.pos.source - 1)
                    .map_or("--set", String::as_str);
                write!(f, "{name}: {}", d.message)?;
            } else if d.pos.line == 0 {
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
                    pos: Pos::at(9, 3),
                    message: "b".into(),
                },
                Diagnostic {
                    pos: Pos::at(2, 5),
                    message: "a".into(),
                },
            ],
        );
        assert_eq!(e.to_string(), "r.yaml:2:5: a\nr.yaml:9:3: b");
    }
}
