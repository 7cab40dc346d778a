//! The HTML page of a report: headings, tables and figures written into one string, and the
//! page's style sheet.

use std::fmt::Write;

use super::ReportError;
use crate::plot::{self, Figure, DEFAULT_SIZE};
use crate::results::pivot::{self, Pivot};
use crate::results::Direction;
use crate::results::RunOverrides;

pub(super) fn esc(s: &str) -> String {
    plot::xml_escape(s)
}

pub(super) struct Page {
    pub(super) html: String,
    pub(super) figures: usize,
    pub(super) tables: usize,
}

impl Page {
    pub(super) fn h2(&mut self, id: &str, title: &str) {
        let _ = writeln!(self.html, "<h2 id=\"{id}\">{}</h2>", esc(title));
    }
    pub(super) fn p(&mut self, text: &str) {
        let _ = writeln!(self.html, "<p>{text}</p>");
    }

    /// A figure with its caption and the stages it was drawn from.
    pub(super) fn figure(&mut self, fig: &Figure) -> Result<(), ReportError> {
        self.figures += 1;
        let svg = plot::svg_string(fig, DEFAULT_SIZE)?;
        let _ = writeln!(
            self.html,
            "<figure id=\"figure-{n}\">{svg}<figcaption><b>Figure {n}.</b> {title}. {sources}</figcaption></figure>",
            n = self.figures,
            title = esc(&fig.title),
            sources = sources_html(&fig.sources),
        );
        Ok(())
    }

    /// A pivot as an HTML table; each cell's tooltip names its stages and keys.
    pub(super) fn pivot(&mut self, p: &Pivot) {
        self.tables += 1;
        let t = p.display_table();
        let first_value = t.columns.len() - p.cols.len();
        let _ = write!(
            self.html,
            "<p class=\"caption\"><b>Table {}.</b> {}{}{}</p><div class=\"scroll\"><table class=\"pivot\"><thead><tr>",
            self.tables,
            esc(&p.caption()),
            if p.direction == Direction::None {
                String::new()
            } else {
                format!("; <b>bold</b>: best ({})", p.direction.describe())
            },
            overrides_html(&p.overrides)
        );
        for c in &t.columns {
            let _ = write!(self.html, "<th>{}</th>", esc(c));
        }
        self.html.push_str("</tr></thead><tbody>");
        for (r, row) in t.rows.iter().enumerate() {
            self.html.push_str("<tr>");
            for (c, cell) in row.iter().enumerate() {
                let title = if c >= first_value {
                    p.cells[r][c - first_value]
                        .as_ref()
                        .map(|x| {
                            x.stages
                                .iter()
                                .map(|(n, k)| format!("{n} {k}"))
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                let text = if cell.strong {
                    format!("<b>{}</b>", esc(&cell.display))
                } else {
                    esc(&cell.display)
                };
                let class = if cell.numeric { " class=\"num\"" } else { "" };
                if title.is_empty() {
                    let _ = write!(self.html, "<td{class}>{text}</td>");
                } else {
                    let _ = write!(
                        self.html,
                        "<td{class} title=\"{}\">{text}</td>",
                        esc(&title)
                    );
                }
            }
            self.html.push_str("</tr>");
        }
        self.html.push_str("</tbody></table></div>\n");
        let stages: Vec<(String, String)> = p
            .cells
            .iter()
            .flatten()
            .flatten()
            .flat_map(|c| c.stages.iter().cloned())
            .collect();
        let mut note = String::new();
        if let Some(b) = p.best_note() {
            let _ = write!(note, "{} ", esc(&b));
        }
        if !p.left_out.is_empty() {
            let _ = write!(
                note,
                "Left out (no value for a grouping parameter): {}. ",
                esc(&pivot::summarise(&p.left_out))
            );
        }
        let _ = writeln!(
            self.html,
            "<p class=\"note\">{note}{}</p>",
            sources_html(&stages)
        );
    }

    /// A numbered table, shown in the page's flow.
    pub(super) fn table(&mut self, t: &crate::results::Table, caption: &str) {
        self.tables += 1;
        let label = format!("<b>Table {}.</b> {}", self.tables, esc(caption));
        self.table_with(t, &label);
    }

    /// A table inside a disclosure (`<details>`, closed or long): not numbered, so that the
    /// numbers a reader sees run 1, 2, 3 without gaps.
    pub(super) fn supplement(&mut self, t: &crate::results::Table, caption: &str) {
        self.table_with(t, &esc(caption));
    }

    pub(super) fn table_with(&mut self, t: &crate::results::Table, caption_html: &str) {
        let _ = write!(
            self.html,
            "<p class=\"caption\">{caption_html}</p><div class=\"scroll\"><table><thead><tr>"
        );
        for c in &t.columns {
            let _ = write!(self.html, "<th>{}</th>", esc(c));
        }
        self.html.push_str("</tr></thead><tbody>");
        for row in &t.rows {
            self.html.push_str("<tr>");
            for cell in row {
                let _ = write!(self.html, "{}", td(cell));
            }
            self.html.push_str("</tr>");
        }
        self.html.push_str("</tbody></table></div>\n");
    }
}

/// A table cell that lets a wide table fit the page: content keys and checksums may
/// break anywhere, stage names after their commas, paths after their slashes; numbers never.
fn td(cell: &crate::results::format::Cell) -> String {
    let d = &cell.display;
    if cell.numeric {
        return format!("<td class=\"num\">{}</td>", esc(d));
    }
    if d.len() >= 32 && d.chars().all(|c| c.is_ascii_hexdigit()) {
        return format!("<td class=\"key\">{}</td>", esc(d));
    }
    let breakable = esc(d).replace(',', ",<wbr>").replace('/', "/<wbr>");
    format!("<td>{breakable}</td>")
}

/// ` — smoke run #4: --set …` after a caption, where the run overrode the recipe.
pub(super) fn overrides_html(o: &RunOverrides) -> String {
    match o.note() {
        Some(n) if o.is_smoke() => format!(" — <span class=\"smoke\">{}</span>", esc(&n)),
        Some(n) => format!(" — {}", esc(&n)),
        None => String::new(),
    }
}

/// `Drawn from 12 stages` with the names and full keys in a disclosure.
pub(super) fn sources_html(sources: &[(String, String)]) -> String {
    let mut s = format!(
        "<details><summary>From {} stage{} (names and content keys)</summary><ul class=\"keys\">",
        sources.len(),
        if sources.len() == 1 { "" } else { "s" }
    );
    for (name, key) in sources {
        let _ = write!(s, "<li>{} <code>{}</code></li>", esc(name), esc(key));
    }
    s.push_str("</ul></details>");
    s
}

pub(super) const STYLE: &str = r#"
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 2em auto; max-width: 1180px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0 0 1em 0; font-size: 0.9em; }
p.caption { margin: 1em 0 0.3em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-size: 0.9em; } .note { font-size: 0.9em; color: #444; }
figure { margin: 1.5em 0; } figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; } ul.keys { columns: 2; font-size: 0.85em; }
nav a { margin-right: 1em; }
/* Wide tables fit the page: long keys and parameter lists wrap anywhere, numbers never;
   what still does not fit scrolls inside its own box. */
div.scroll { overflow-x: auto; max-width: 100%; }
td.key { overflow-wrap: anywhere; font-family: "DejaVu Sans Mono", monospace; font-size: 0.85em; }
th { white-space: nowrap; }
.banner { padding: 0.6em 1em; border-left: 5px solid #888; background: #f4f4f4; }
.banner.smoke, span.smoke { color: #8a0000; font-weight: bold; }
.banner.smoke { border-left-color: #c62828; background: #fdecea; }
"#;
