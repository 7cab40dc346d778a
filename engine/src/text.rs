//! Aligned text columns, for every table the engine prints (the plan, the results, progress).

/// Which side of its column a padded cell's text sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// `text` padded with spaces to `width` characters (never cut). The one padding of every
/// aligned column the engine prints, instead of `format!("{:<w$}")`: std's width argument is
/// a `u16` and panics ("Formatting argument out of range") past 65,535, a width that a long
/// stage name or a query's long cell reaches.
pub fn pad(text: &str, width: usize, align: Align) -> String {
    let fill = width.saturating_sub(text.chars().count());
    let mut out = String::with_capacity(text.len() + fill);
    if align == Align::Right {
        out.extend(std::iter::repeat_n(' ', fill));
    }
    out.push_str(text);
    if align == Align::Left {
        out.extend(std::iter::repeat_n(' ', fill));
    }
    out
}
