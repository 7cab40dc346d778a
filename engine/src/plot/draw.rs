//! Rendering a [`Figure`] with plotters: the same drawing code for PNG (bitmap backend)
//! and SVG, text in the embedded DejaVu Sans so that a bare machine draws legible labels.
//!
//! Layout, top to bottom: the title; the plot, with the legend in a panel of its own on
//! the right (it never covers data); a footer naming the recipe and the stages drawn.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Figure, PlotError, XAxis};

pub const DEFAULT_SIZE: (u32, u32) = (1100, 680);

/// DejaVu Sans (engine/assets/DejaVuSans-LICENSE.txt): plotters' `ab_glyph` text needs a
/// font registered by name, and system fonts may be missing on CI machines.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Cannot fail for the bundled file (a unit test draws text with it).
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Okabe–Ito: distinguishable with the common colour-vision deficiencies; yellow, too
/// pale on white, is left out. Past eight lines the markers differ too.
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Writes the figure to `path`: `.png` or `.svg`.
pub fn save(fig: &Figure, path: &Path, size: (u32, u32)) -> Result<(), PlotError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let io = |source| PlotError::Io {
        path: path.display().to_string(),
        source,
    };
    match ext.as_deref() {
        Some("png") => {
            register_font();
            // The PNG encoder opens the file only once the figure is drawn, and reports a
            // failure as a nested value without the path: open it first, for a clear error.
            std::fs::File::create(path).map_err(io)?;
            {
                let root = BitMapBackend::new(path, size).into_drawing_area();
                draw(&root, fig)?;
                root.present().map_err(err)?;
            }
            let png = std::fs::read(path).map_err(io)?;
            let tagged = png_with_text(
                &png,
                &[
                    ("Title", fig.title.as_str()),
                    (
                        "Software",
                        &format!("rkd-orch {}", env!("CARGO_PKG_VERSION")),
                    ),
                    ("Description", &fig.provenance()),
                ],
            )
            .ok_or_else(|| PlotError::Draw("the PNG encoder wrote no IHDR chunk".into()))?;
            std::fs::write(path, tagged).map_err(io)
        }
        Some("svg") => std::fs::write(path, svg_string(fig, size)?).map_err(io),
        _ => Err(PlotError::Usage(format!(
            "{}: the output must end in .png or .svg",
            path.display()
        ))),
    }
}

/// The figure as an SVG document (also inlined into `report` pages).
pub fn svg_string(fig: &Figure, size: (u32, u32)) -> Result<String, PlotError> {
    register_font();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, size).into_drawing_area();
        draw(&root, fig)?;
        root.present().map_err(err)?;
    }
    // Provenance where SVG tools look for it: <title> and <desc> right after <svg …>.
    let meta = format!(
        "<title>{}</title><desc>{}</desc>",
        xml_escape(&fig.title),
        xml_escape(&fig.provenance())
    );
    if let Some(end) = s
        .find("<svg")
        .and_then(|i| s[i..].find('>').map(|j| i + j + 1))
    {
        s.insert_str(end, &meta);
    }
    Ok(s)
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Inserts `tEXt` chunks after the PNG's IHDR (keywords and text in Latin-1; other
/// characters become `?`).
fn png_with_text(png: &[u8], entries: &[(&str, &str)]) -> Option<Vec<u8>> {
    const SIG: usize = 8;
    let ihdr_len = u32::from_be_bytes(png.get(SIG..SIG + 4)?.try_into().ok()?) as usize;
    if png.get(SIG + 4..SIG + 8)? != b"IHDR" {
        return None;
    }
    let after_ihdr = SIG + 12 + ihdr_len;
    let mut out = png.get(..after_ihdr)?.to_vec();
    for (key, text) in entries {
        let mut data: Vec<u8> = key.bytes().collect();
        data.push(0);
        data.extend(
            text.chars()
                .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' }),
        );
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(b"tEXt");
        crc.update(&data);
        out.extend(b"tEXt");
        out.extend(&data);
        out.extend(crc.sum().to_be_bytes());
    }
    out.extend(png.get(after_ihdr..)?);
    Some(out)
}

/// Approximate width of text in DejaVu Sans (for layout only).
fn text_width(s: &str, size: f64) -> f64 {
    // Rendered size ≈ 0.8 × nominal; DejaVu Sans averages ≈ 0.66 em per character (with
    // a margin, so that wrapped lines never run off the image).
    s.chars().count() as f64 * size * 0.8 * 0.66
}

/// The footer's lines: the recipe, then the stages drawn (name and short key), wrapped to
/// `chars` per line, at most `max_lines` lines.
fn footer_lines(fig: &Figure, chars: usize, max_lines: usize) -> Vec<String> {
    let mut recipe = format!("recipe {}", fig.recipe);
    if let Some(sha) = &fig.recipe_sha256 {
        recipe.push_str(&format!(" (sha256 {})", &sha[..12.min(sha.len())]));
    }
    let parts = [
        recipe,
        format!("rkd-orch {}", env!("CARGO_PKG_VERSION")),
        format!(
            "{} stage{} (full keys in this file's metadata):",
            fig.sources.len(),
            if fig.sources.len() == 1 { "" } else { "s" }
        ),
    ];
    let mut lines: Vec<String> = vec![String::new()];
    for p in parts {
        let last = lines.last_mut().expect("one line");
        if last.is_empty() {
            last.push_str(&p);
        } else if last.chars().count() + 3 + p.chars().count() <= chars {
            last.push_str(" · ");
            last.push_str(&p);
        } else {
            lines.push(p);
        }
    }
    let mut line = String::new();
    for (i, (name, key)) in fig.sources.iter().enumerate() {
        let item = format!("{name} {}", &key[..12.min(key.len())]);
        let sep = if line.is_empty() { "" } else { ", " };
        if line.chars().count() + sep.len() + item.chars().count() > chars {
            if lines.len() + 1 >= max_lines {
                let left = fig.sources.len() - i;
                line.push_str(&format!(", … and {left} more"));
                lines.push(line);
                return lines;
            }
            lines.push(std::mem::take(&mut line));
            line = item;
        } else {
            line.push_str(sep);
            line.push_str(&item);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Tick labels: integers without decimals, other numbers with as few digits as tell them
/// apart (`0.25`, not `0.250000`).
fn tick(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(err)?;
    let (w, h) = root.dim_in_pixel();
    // plotters draws text at about 0.8 of the nominal size: these are ~13, 24, 18, 15 px.
    let footer_size = 16.0;
    let chars = ((w as f64 - 30.0) / text_width("x", footer_size)) as usize;
    let footer = footer_lines(fig, chars.max(40), 4);
    let footer_h = footer.len() as u32 * 19 + 14;
    let (main, foot) = root.split_vertically(h.saturating_sub(footer_h));
    let small = (FAMILY, footer_size)
        .into_font()
        .color(&RGBColor(80, 80, 80));
    for (i, l) in footer.iter().enumerate() {
        foot.draw_text(l, &small, (15, 6 + i as i32 * 19))
            .map_err(err)?;
    }

    let titled = main
        .titled(&fig.title, (FAMILY, 30).into_font().color(&BLACK))
        .map_err(err)?;
    let legend_font = 19.0;
    let legend_w = if fig.series.len() > 1 {
        let widest = fig
            .series
            .iter()
            .map(|s| text_width(&s.label, legend_font))
            .chain(fig.legend_title.iter().map(|t| text_width(t, legend_font)))
            .fold(0.0, f64::max);
        (widest + 70.0).clamp(120.0, w as f64 * 0.4) as u32
    } else {
        0
    };
    let (plot_area, legend_area) = titled.split_horizontally(w - legend_w);

    // Ranges: every point and error bar inside, with a margin.
    let pts = fig.series.iter().flat_map(|s| &s.points);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in pts {
        let e = p.err.unwrap_or(0.0);
        y0 = y0.min(p.y - e);
        y1 = y1.max(p.y + e);
        x0 = x0.min(p.x);
        x1 = x1.max(p.x);
    }
    if !y0.is_finite() {
        return Err(PlotError::Usage("nothing to draw: no data points".into()));
    }
    let pad = if y1 > y0 {
        (y1 - y0) * 0.08
    } else {
        0.05 * y0.abs().max(1.0)
    };
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (x0, x1) = match &fig.x_axis {
        XAxis::Categorical(labels) => (-0.5, labels.len() as f64 - 0.5),
        XAxis::Numeric { .. } => {
            let pad = if x1 > x0 { (x1 - x0) * 0.05 } else { 0.5 };
            (x0 - pad, x1 + pad)
        }
    };

    let mut chart = ChartBuilder::on(&plot_area)
        .margin(18)
        .x_label_area_size(62)
        .y_label_area_size(86)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let categorical_labels: Vec<String> = match &fig.x_axis {
        XAxis::Categorical(l) => l.clone(),
        XAxis::Numeric { .. } => Vec::new(),
    };
    let integer_x = matches!(fig.x_axis, XAxis::Numeric { integer: true });
    let x_fmt = |v: &f64| -> String {
        let near = (v - v.round()).abs() < 1e-6;
        if !categorical_labels.is_empty() {
            let i = v.round();
            if near && i >= 0.0 && (i as usize) < categorical_labels.len() {
                categorical_labels[i as usize].clone()
            } else {
                String::new()
            }
        } else if integer_x && !near {
            String::new()
        } else {
            tick(*v)
        }
    };
    let y_fmt = |v: &f64| tick(*v);
    // Enough candidate ticks that every category (at whole numbers) is one of them.
    let x_ticks = match &fig.x_axis {
        XAxis::Categorical(l) => 2 * l.len() + 2,
        XAxis::Numeric { integer: true } => ((x1 - x0).round() as usize + 2).min(12),
        XAxis::Numeric { integer: false } => 10,
    };
    let mut mesh = chart.configure_mesh();
    if !categorical_labels.is_empty() {
        // Grid lines between categories would only suggest an order of magnitude.
        mesh.disable_x_mesh();
    }
    mesh.x_desc(fig.x_label.as_str())
        .y_desc(fig.y_label.as_str())
        .axis_desc_style((FAMILY, 22))
        .label_style((FAMILY, 19))
        .x_labels(x_ticks)
        .y_labels(8)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(err)?;

    // Lines with error bars at the same x are shifted apart a little, so that the bars do
    // not hide each other.
    let bars = fig
        .series
        .iter()
        .flat_map(|s| &s.points)
        .any(|p| p.err.is_some());
    let n = fig.series.len();
    let dodge = |i: usize| -> f64 {
        if bars && n > 1 {
            (i as f64 - (n as f64 - 1.0) / 2.0) * (x1 - x0) * 0.012
        } else {
            0.0
        }
    };
    for (i, s) in fig.series.iter().enumerate() {
        let c = color(i);
        let dx = dodge(i);
        let line: Vec<(f64, f64)> = s.points.iter().map(|p| (p.x + dx, p.y)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), c.stroke_width(3)))
            .map_err(err)?;
        chart
            .draw_series(s.points.iter().filter_map(|p| {
                p.err.map(|e| {
                    ErrorBar::new_vertical(p.x + dx, p.y - e, p.y, p.y + e, c.stroke_width(2), 12)
                })
            }))
            .map_err(err)?;
        draw_markers(&chart, i, &line, c)?;
    }

    if legend_w > 0 {
        let mut y = 70;
        if let Some(t) = &fig.legend_title {
            legend_area
                .draw_text(
                    t,
                    &(FAMILY, legend_font).into_font().color(&BLACK),
                    (10, y - 28),
                )
                .map_err(err)?;
        }
        let font = (FAMILY, legend_font)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (i, s) in fig.series.iter().enumerate() {
            let c = color(i);
            legend_area
                .draw(&PathElement::new(vec![(10, y), (42, y)], c.stroke_width(3)))
                .map_err(err)?;
            marker(&legend_area, i, (26, y), c)?;
            legend_area
                .draw_text(&s.label, &font, (52, y))
                .map_err(err)?;
            y += 26;
        }
    }
    Ok(())
}

type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_markers<DB: DrawingBackend>(
    chart: &Chart<'_, DB>,
    i: usize,
    pts: &[(f64, f64)],
    c: RGBColor,
) -> Result<(), PlotError> {
    let area = chart.plotting_area();
    for &(x, y) in pts {
        let at = area.map_coordinate(&(x, y));
        let (ox, oy) = {
            let r = area.get_base_pixel();
            (r.0, r.1)
        };
        // Markers are drawn in pixels on the root, around the mapped point.
        let root = area.strip_coord_spec();
        marker(&root, i, (at.0 - ox, at.1 - oy), c)?;
    }
    Ok(())
}

/// Circle, triangle, square, diamond: the shape changes every `COLORS.len()` lines.
fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    i: usize,
    (x, y): (i32, i32),
    c: RGBColor,
) -> Result<(), PlotError> {
    let r = 6;
    let style = c.filled();
    match (i / COLORS.len()) % 4 {
        0 => area.draw(&Circle::new((x, y), r, style)),
        1 => area.draw(&Polygon::new(
            vec![(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)],
            style,
        )),
        2 => area.draw(&Rectangle::new([(x - r, y - r), (x + r, y + r)], style)),
        _ => area.draw(&Polygon::new(
            vec![
                (x, y - r - 2),
                (x + r + 2, y),
                (x, y + r + 2),
                (x - r - 2, y),
            ],
            style,
        )),
    }
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{Point, Series};

    fn fig() -> Figure {
        Figure {
            title: "r: recall@1 vs p".into(),
            x_label: "p".into(),
            y_label: "recall@1".into(),
            x_axis: XAxis::Categorical(vec!["random".into(), "superclass".into()]),
            series: vec![
                Series {
                    label: "1".into(),
                    points: vec![
                        Point {
                            x: 0.0,
                            y: 0.5,
                            err: Some(0.01),
                        },
                        Point {
                            x: 1.0,
                            y: 0.6,
                            err: None,
                        },
                    ],
                },
                Series {
                    label: "2".into(),
                    points: vec![Point {
                        x: 0.0,
                        y: 0.4,
                        err: None,
                    }],
                },
            ],
            legend_title: Some("p".into()),
            recipe: "r".into(),
            recipe_sha256: Some("ab".repeat(32)),
            sources: vec![("eval[p=1]".into(), "cd".repeat(16))],
        }
    }

    #[test]
    fn png_has_the_provenance_chunk_and_svg_the_description() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("f.png");
        save(&fig(), &png, (640, 400)).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("tEXtDescription\0rkd-orch"),
            "no provenance chunk"
        );
        assert!(text.contains(&"cd".repeat(16)));
        // The PNG still decodes (chunk CRCs hold): re-read with plotters' own decoder is not
        // available, so check every chunk's CRC here.
        let mut at = 8;
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let mut crc = flate2::Crc::new();
            crc.update(&bytes[at + 4..at + 8 + len]);
            let stored = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc.sum(), stored, "chunk at {at}");
            at += 12 + len;
        }
        let svg = svg_string(&fig(), (640, 400)).unwrap();
        assert!(svg.contains("<desc>rkd-orch"), "{}", &svg[..300]);
        assert!(
            svg.contains("\nsuperclass\n</text>"),
            "category labels are drawn"
        );
        assert!(svg.contains("eval[p=1]"));
        let e = save(&fig(), &dir.path().join("f.pdf"), (10, 10))
            .unwrap_err()
            .to_string();
        assert!(e.contains(".png or .svg"), "{e}");
    }

    #[test]
    fn footer_wraps_and_counts_what_it_leaves_out() {
        let mut f = fig();
        f.sources = (0..50)
            .map(|i| (format!("eval[p={i}]"), format!("{i:0>32}")))
            .collect();
        let lines = footer_lines(&f, 80, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("recipe r (sha256 abababababab) · rkd-orch "));
        assert!(lines[2].ends_with("more"), "{lines:?}");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(2.0), "2");
    }
}
