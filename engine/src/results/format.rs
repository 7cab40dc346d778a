//! One table, four renderings: aligned text for terminals, Markdown for notes and issues,
//! CSV and JSON for pandas, R and scripts.
//!
//! Cells carry both what people read (`0.8123 ± 0.0100`, rounded) and what programs read
//! (the full-precision number, typed), so that CSV and JSON never lose digits to display.

use serde_json::{Map, Value};

use crate::store::{QueryResult, SqlValue};

pub use crate::text::{pad, Align};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    Csv,
    /// An array of objects, one per row.
    Json,
    /// A GitHub-flavoured Markdown table.
    Markdown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// What a person reads.
    pub display: String,
    /// What a program reads (CSV writes numbers from here, at full precision).
    pub value: Value,
    /// Right-aligned in text and Markdown.
    pub numeric: bool,
    /// Marked: `*` in text, bold in Markdown (the best cell of a pivot).
    pub strong: bool,
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Self {
        let s = s.into();
        Self {
            value: Value::String(s.clone()),
            display: s,
            numeric: false,
            strong: false,
        }
    }
    /// A number shown rounded, kept exact for CSV and JSON.
    pub fn number(v: f64, display: String) -> Self {
        Self {
            display,
            value: serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
            numeric: true,
            strong: false,
        }
    }
    pub fn int(v: i64) -> Self {
        Self {
            display: v.to_string(),
            value: Value::from(v),
            numeric: true,
            strong: false,
        }
    }
    /// A missing value in a numeric column: `-` for people, null (empty in CSV) for programs.
    pub fn missing() -> Self {
        Self {
            display: "-".into(),
            value: Value::Null,
            numeric: true,
            strong: false,
        }
    }
    /// A parameter value: a number where it is one, so that pandas gets a numeric column.
    pub fn param(v: &str) -> Self {
        let value = typed(v);
        Self {
            numeric: value.is_number(),
            display: v.to_string(),
            value,
            strong: false,
        }
    }
    pub fn strong(mut self, yes: bool) -> Self {
        self.strong = yes;
        self
    }
}

/// `"2"` → 2, `"0.5"` → 0.5, `"true"` → true, anything else a string.
pub fn typed(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        Value::from(i)
    } else if let Some(n) = v
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .and_then(serde_json::Number::from_f64)
    {
        Value::Number(n)
    } else if let Ok(b) = v.parse::<bool>() {
        Value::Bool(b)
    } else {
        Value::String(v.to_string())
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: Vec<String>) -> Self {
        Self {
            columns,
            rows: Vec::new(),
        }
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.text(),
            Format::Csv => self.csv(),
            Format::Json => format!("{}\n", self.json_string()),
            Format::Markdown => self.markdown(),
        }
    }

    /// Columns padded to their widest cell, two spaces apart, a rule under the header;
    /// numbers right-aligned. A strong cell gets a trailing ` *`.
    pub fn text(&self) -> String {
        let cols = self.columns.len();
        // In a column with a marked cell the others are padded as if marked, so that the
        // digits stay aligned.
        let marked: Vec<bool> = (0..cols)
            .map(|c| self.rows.iter().any(|r| r.get(c).is_some_and(|x| x.strong)))
            .collect();
        let shown: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(c, x)| match (x.strong, marked[c]) {
                        (true, _) => format!("{} *", x.display),
                        (false, true) => format!("{}  ", x.display),
                        (false, false) => x.display.clone(),
                    })
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                shown
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .chain([self.columns[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // A column is right-aligned when its cells are numbers (or missing numbers).
        let right: Vec<bool> = (0..cols)
            .map(|c| {
                !self.rows.is_empty()
                    && self
                        .rows
                        .iter()
                        .all(|r| r.get(c).is_some_and(|x| x.numeric))
            })
            .collect();
        let line = |cells: &[String]| -> String {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, v)| {
                    let align = if right[c] { Align::Right } else { Align::Left };
                    pad(v, widths[c], align)
                })
                .collect();
            format!("{}\n", padded.join("  ").trim_end())
        };
        let mut out = line(&self.columns);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&rule.join("  "));
        out.push('\n');
        for r in &shown {
            out.push_str(&line(r));
        }
        out
    }

    /// RFC 4180: a header, then one line per row; numbers at full precision, missing
    /// values empty.
    pub fn csv(&self) -> String {
        let mut out = csv_line(self.columns.iter().map(String::as_str));
        for r in &self.rows {
            let fields: Vec<String> = r
                .iter()
                .map(|c| match &c.value {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                })
                .collect();
            out.push_str(&csv_line(fields.iter().map(String::as_str)));
        }
        out
    }

    /// One object per row, keyed by column name, values typed.
    pub fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    for (c, cell) in self.columns.iter().zip(r) {
                        m.insert(c.clone(), cell.value.clone());
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    /// An array with one object per line, keys in column order (serde_json's maps would
    /// sort them; the crate keeps that default because content keys rely on it).
    pub fn json_string(&self) -> String {
        if self.rows.is_empty() {
            return "[]".into();
        }
        let mut out = String::from("[\n");
        for (i, r) in self.rows.iter().enumerate() {
            let fields: Vec<String> = self
                .columns
                .iter()
                .zip(r)
                .map(|(c, cell)| format!("{}: {}", Value::String(c.clone()), cell.value))
                .collect();
            out.push_str(&format!("  {{{}}}", fields.join(", ")));
            out.push_str(if i + 1 < self.rows.len() { ",\n" } else { "\n" });
        }
        out.push(']');
        out
    }

    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n",
            self.columns
                .iter()
                .map(|c| esc(c))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let numeric = |c: usize| {
            !self.rows.is_empty()
                && self
                    .rows
                    .iter()
                    .all(|r| r.get(c).is_some_and(|x| x.numeric))
        };
        let rule: Vec<&str> = (0..self.columns.len())
            .map(|c| if numeric(c) { "---:" } else { "---" })
            .collect();
        out.push_str(&format!("|{}|\n", rule.join("|")));
        for r in &self.rows {
            let cells: Vec<String> = r
                .iter()
                .map(|c| {
                    if c.strong {
                        format!("**{}**", esc(&c.display))
                    } else {
                        esc(&c.display)
                    }
                })
                .collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }
}

/// The rows of `rkd-orch query`, typed as SQLite returned them.
pub fn query_table(q: &QueryResult) -> Table {
    let mut t = Table::new(q.columns.clone());
    for r in &q.rows {
        t.rows.push(
            r.iter()
                .map(|v| match v {
                    SqlValue::Null => Cell {
                        display: "NULL".into(),
                        value: Value::Null,
                        numeric: false,
                        strong: false,
                    },
                    SqlValue::Integer(i) => Cell::int(*i),
                    // Shortest text that reads back as the same number.
                    SqlValue::Real(f) => Cell::number(*f, format!("{f}")),
                    SqlValue::Text(s) => Cell::text(s.clone()),
                    SqlValue::Blob(n) => Cell::text(format!("<blob, {n} bytes>")),
                })
                .collect(),
        );
    }
    t
}

pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let f: Vec<String> = fields.map(csv_field).collect();
    format!("{}\n", f.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_takes_widths_past_what_format_allows() {
        let wide = 70_000;
        let left = pad("ab", wide, Align::Left);
        assert_eq!(left.chars().count(), wide);
        assert!(left.starts_with("ab "));
        let right = pad("ab", wide, Align::Right);
        assert!(right.ends_with(" ab") && right.chars().count() == wide);
        // Never cut: a text wider than the column stays whole.
        let long: String = "x".repeat(wide + 5);
        assert_eq!(pad(&long, wide, Align::Left), long);
        assert_eq!(pad("é", 3, Align::Left), "é  ");
    }

    fn table() -> Table {
        let mut t = Table::new(vec!["stage".into(), "recall@1".into(), "note".into()]);
        t.rows.push(vec![
            Cell::text("a"),
            Cell::number(0.123456789, "0.1235".into()).strong(true),
            Cell::text("x, \"y\""),
        ]);
        t.rows
            .push(vec![Cell::text("b|c"), Cell::missing(), Cell::text("")]);
        t
    }

    #[test]
    fn text_aligns_numbers_right_and_marks_strong_cells() {
        let t = table().text();
        assert_eq!(
            t,
            "stage  recall@1  note\n-----  --------  ------\na      0.1235 *  x, \"y\"\nb|c         -\n"
        );
    }

    #[test]
    fn csv_quotes_and_keeps_full_precision() {
        assert_eq!(
            table().csv(),
            "stage,recall@1,note\na,0.123456789,\"x, \"\"y\"\"\"\nb|c,,\n"
        );
    }

    #[test]
    fn json_is_typed_and_markdown_escapes_pipes() {
        let j = table().json();
        assert_eq!(j[0]["recall@1"], 0.123456789);
        let text = table().json_string();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), j);
        assert!(
            text.starts_with("[\n  {\"stage\": \"a\", \"recall@1\": 0.123456789,"),
            "{text}"
        );
        assert!(j[1]["recall@1"].is_null());
        let md = table().markdown();
        assert!(md.contains("| **0.1235** |"), "{md}");
        assert!(md.contains("| b\\|c | - |"), "{md}");
        assert!(md.contains("|---|---:|---|"), "{md}");
        assert_eq!(typed("2"), Value::from(2));
        assert_eq!(typed("0.5"), Value::from(0.5));
        assert_eq!(typed("superclass"), Value::from("superclass"));
    }
}
