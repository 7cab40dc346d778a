//! Rendering a [`Figure`] with plotters: the same drawing code for PNG (bitmap backend)
//! and SVG, text in the embedded DejaVu Sans so that a bare machine draws legible labels.
//!
//! Layout, top to bottom: the title; the plot, with the legend in a panel of its own on
//! the right (it never covers data); a footer naming the recipe and the stages drawn.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Figure, PlotError, Series, XAxis};

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
/// pale on white, is left out. Markers and line patterns vary too (`look`).
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

/// `text` in lines of at most `chars` characters, broken at spaces.
fn wrap(text: &str, chars: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > chars {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// How the i-th legend entry is drawn: colour, marker shape and line pattern all change
/// from one entry to the next (7 colours × 5 shapes × 3 patterns), so that lines stay apart
/// where colours are hard to tell apart or lines cross.
#[derive(Clone, Copy)]
struct Look {
    color: RGBColor,
    shape: usize,
    /// 0 solid, 1 dashed, 2 dotted.
    dash: usize,
}

fn look(i: usize) -> Look {
    Look {
        color: color(i),
        shape: i % 5,
        dash: (i / COLORS.len()) % 3,
    }
}

/// The plot's data ranges: every point and error bar inside, with a margin.
struct Ranges {
    x: (f64, f64),
    y: (f64, f64),
}

fn ranges(fig: &Figure) -> Result<Ranges, PlotError> {
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in fig.series.iter().flat_map(|s| &s.points) {
        let e = p.err.unwrap_or(0.0);
        y0 = y0.min(p.y - e);
        y1 = y1.max(p.y + e);
        x0 = x0.min(p.x);
        x1 = x1.max(p.x);
    }
    if !y0.is_finite() {
        return Err(PlotError::Usage("nothing to draw: no data points".into()));
    }
    // Dots stand for amounts (a metric per stage): measured from zero, as bars would be.
    if !fig.connect && y0 > 0.0 {
        y0 = 0.0;
    }
    let pad = if y1 > y0 {
        (y1 - y0) * 0.08
    } else {
        0.05 * y0.abs().max(1.0)
    };
    let x = match &fig.x_axis {
        XAxis::Categorical(labels) => (-0.5, labels.len() as f64 - 0.5),
        XAxis::Numeric { .. } => {
            let pad = if x1 > x0 { (x1 - x0) * 0.05 } else { 0.5 };
            (x0 - pad, x1 + pad)
        }
    };
    Ok(Ranges {
        x,
        y: (y0 - pad, y1 + pad),
    })
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
    // What the run overrode, under the title: a smoke run in red, for it is not the
    // recipe's result.
    let body = match fig.overrides.note() {
        Some(note) => {
            let size = 18.0;
            let lines = wrap(&note, ((w as f64 - 40.0) / text_width("x", size)) as usize);
            let (top, rest) = titled.split_vertically(lines.len() as u32 * 21 + 6);
            let shade = if fig.overrides.is_smoke() {
                RGBColor(190, 30, 30)
            } else {
                RGBColor(80, 80, 80)
            };
            let font = (FAMILY, size).into_font().color(&shade);
            for (i, l) in lines.iter().enumerate() {
                top.draw_text(l, &font, (20, i as i32 * 21)).map_err(err)?;
            }
            rest
        }
        None => titled,
    };

    // One legend entry per distinct label (small multiples repeat them in every panel).
    let mut labels: Vec<&str> = Vec::new();
    for s in &fig.series {
        if !labels.contains(&s.label.as_str()) {
            labels.push(&s.label);
        }
    }
    let legend_font = 19.0;
    let legend_w = if labels.len() > 1 {
        let widest = labels
            .iter()
            .map(|l| text_width(l, legend_font))
            .chain(fig.legend_title.iter().map(|t| text_width(t, legend_font)))
            .fold(0.0, f64::max);
        (widest + 70.0).clamp(120.0, w as f64 * 0.4) as u32
    } else {
        0
    };
    let (plot_area, legend_area) = body.split_horizontally(w - legend_w);
    let r = ranges(fig)?;
    let look_of = |s: &Series| look(labels.iter().position(|l| *l == s.label).unwrap_or(0));

    let mut panels: Vec<Option<&str>> = Vec::new();
    for s in &fig.series {
        if !panels.contains(&s.panel.as_deref()) {
            panels.push(s.panel.as_deref());
        }
    }
    let n = panels.len();
    let cols = if n <= 3 {
        n
    } else {
        (n as f64).sqrt().ceil() as usize
    };
    let rows = n.div_ceil(cols.max(1));
    let areas = if n > 1 {
        // One y-axis title for the grid, turned, in a strip of its own on the left.
        let (strip, grid) = plot_area.split_horizontally(34);
        let (_, sh) = strip.dim_in_pixel();
        let turned = (FAMILY, 22)
            .into_font()
            .color(&BLACK)
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Center, VPos::Center));
        strip
            .draw_text(&fig.y_label, &turned, (14, sh as i32 / 2))
            .map_err(err)?;
        grid.split_evenly((rows, cols))
    } else {
        vec![plot_area]
    };
    for (k, (panel, area)) in panels.iter().zip(&areas).enumerate() {
        let mine: Vec<(Look, &Series)> = fig
            .series
            .iter()
            .filter(|s| s.panel.as_deref() == *panel)
            .map(|s| (look_of(s), s))
            .collect();
        let axes = Axes {
            caption: *panel,
            // Axis titles once: under the bottom row, left of the first column.
            x_desc: k + cols >= n,
            y_desc: n == 1,
        };
        draw_panel(area, fig, &mine, &r, &axes)?;
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
        for (i, label) in labels.iter().enumerate() {
            let l = look(i);
            if fig.connect {
                let pts = vec![(6, y), (46, y)];
                let style = l.color.stroke_width(3);
                match l.dash {
                    0 => legend_area.draw(&PathElement::new(pts, style)),
                    1 => legend_area.draw(&DashedPathElement::new(pts, 9, 5, style)),
                    _ => legend_area.draw(&DashedPathElement::new(pts, 3, 4, style)),
                }
                .map_err(err)?;
            }
            marker(&legend_area, l, (26, y))?;
            legend_area.draw_text(label, &font, (56, y)).map_err(err)?;
            y += 26;
        }
    }
    Ok(())
}

/// What one panel labels.
struct Axes<'a> {
    /// The panel's title (`p = 2`) among small multiples.
    caption: Option<&'a str>,
    x_desc: bool,
    y_desc: bool,
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    series: &[(Look, &Series)],
    r: &Ranges,
    axes: &Axes,
) -> Result<(), PlotError> {
    let ((x0, x1), (y0, y1)) = (r.x, r.y);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(if axes.caption.is_some() { 10 } else { 18 })
        .x_label_area_size(if axes.x_desc { 62 } else { 36 })
        .y_label_area_size(if axes.y_desc { 86 } else { 60 });
    if let Some(c) = axes.caption {
        builder.caption(c, (FAMILY, 21).into_font().color(&BLACK));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
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
    if axes.x_desc {
        mesh.x_desc(fig.x_label.as_str());
    }
    if axes.y_desc {
        mesh.y_desc(fig.y_label.as_str());
    }
    mesh.axis_desc_style((FAMILY, 22))
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
    // not hide each other — never by more than a third of a category (or 5% of the range)
    // in all, so that every point stays over its x.
    let bars = series
        .iter()
        .flat_map(|(_, s)| &s.points)
        .any(|p| p.err.is_some());
    let n = series.len();
    let unit = match fig.x_axis {
        XAxis::Categorical(_) => 1.0 / 3.0,
        XAxis::Numeric { .. } => (x1 - x0) * 0.05,
    };
    let step = ((x1 - x0) * 0.012).min(unit / n.max(2) as f64);
    let dodge = |i: usize| -> f64 {
        if bars && n > 1 {
            (i as f64 - (n as f64 - 1.0) / 2.0) * step
        } else {
            0.0
        }
    };
    let value_font = (FAMILY, 18)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (l, s)) in series.iter().enumerate() {
        let c = l.color;
        let dx = dodge(i);
        let line: Vec<(f64, f64)> = s.points.iter().map(|p| (p.x + dx, p.y)).collect();
        if fig.connect {
            let style = c.stroke_width(3);
            match l.dash {
                0 => chart.draw_series(LineSeries::new(line.clone(), style)),
                1 => chart.draw_series(DashedLineSeries::new(line.clone(), 9, 5, style)),
                _ => chart.draw_series(DashedLineSeries::new(line.clone(), 3, 4, style)),
            }
            .map_err(err)?;
        }
        chart
            .draw_series(s.points.iter().filter_map(|p| {
                p.err.map(|e| {
                    ErrorBar::new_vertical(p.x + dx, p.y - e, p.y, p.y + e, c.stroke_width(2), 12)
                })
            }))
            .map_err(err)?;
        draw_markers(&chart, *l, &line)?;
        if !fig.connect {
            // Dots alone: each with its number, as a table would give it.
            let plot = chart.plotting_area();
            let (ox, oy) = plot.get_base_pixel();
            let root = plot.strip_coord_spec();
            for p in &s.points {
                let at = plot.map_coordinate(&(p.x + dx, p.y));
                let text = match p.err {
                    Some(e) => format!("{:.4} ± {:.4}", p.y, e),
                    None => format!("{:.4}", p.y),
                };
                root.draw_text(&text, &value_font, (at.0 - ox + 12, at.1 - oy))
                    .map_err(err)?;
            }
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
    l: Look,
    pts: &[(f64, f64)],
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
        marker(&root, l, (at.0 - ox, at.1 - oy))?;
    }
    Ok(())
}

/// Circle, triangle, square, diamond, inverted triangle.
fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    l: Look,
    (x, y): (i32, i32),
) -> Result<(), PlotError> {
    let r = 6;
    let style = l.color.filled();
    match l.shape {
        0 => area.draw(&Circle::new((x, y), r, style)),
        1 => area.draw(&Polygon::new(
            vec![(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)],
            style,
        )),
        2 => area.draw(&Rectangle::new([(x - r, y - r), (x + r, y + r)], style)),
        3 => area.draw(&Polygon::new(
            vec![
                (x, y - r - 2),
                (x + r + 2, y),
                (x, y + r + 2),
                (x - r - 2, y),
            ],
            style,
        )),
        _ => area.draw(&Polygon::new(
            vec![(x, y + r + 1), (x - r - 1, y - r), (x + r + 1, y - r)],
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
                    panel: None,
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
                    panel: None,
                    points: vec![Point {
                        x: 0.0,
                        y: 0.4,
                        err: None,
                    }],
                },
            ],
            legend_title: Some("p".into()),
            connect: true,
            recipe: "r".into(),
            recipe_sha256: Some("ab".repeat(32)),
            overrides: Default::default(),
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
    fn lines_differ_in_colour_marker_and_pattern_and_notes_wrap() {
        let looks: Vec<(RGBColor, usize, usize)> = (0..21)
            .map(|i| (look(i).color, look(i).shape, look(i).dash))
            .collect();
        for (i, a) in looks.iter().enumerate() {
            for b in &looks[i + 1..] {
                assert_ne!(a, b);
            }
            // Neighbours in the legend never share a colour or a shape.
            if let Some(next) = looks.get(i + 1) {
                assert!(a.0 != next.0 && a.1 != next.1, "{i}");
            }
        }
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        // Small multiples and a smoke note draw (and the note is in the metadata).
        let mut f = fig();
        for (s, p) in f.series.iter_mut().zip(["p = 1", "p = 2"]) {
            s.panel = Some(p.into());
            s.label = "x".into();
        }
        f.overrides = crate::results::RunOverrides {
            sets: Some(vec!["stages.*.epochs=1".into()]),
            smoke: vec!["stages.*.epochs=1".into()],
            invocation: Some(2),
        };
        let svg = svg_string(&f, (800, 500)).unwrap();
        assert!(svg.contains("\np = 2\n"), "panel titles");
        assert!(
            svg.matches("smoke run #2").count() >= 2,
            "drawn and in <desc>"
        );
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
