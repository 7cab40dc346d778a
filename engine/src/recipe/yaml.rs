//! The recipe's YAML reader: yaml-rust2's event parser turned into the `marked_yaml::Node`
//! tree the recipe parser reads, a position on every node.
//!
//! Our own loader rather than marked-yaml's, because a recipe needs what that one refuses or
//! ignores: anchors and aliases (`&x`, `*x`: standard YAML, and what PyYAML writes for any
//! object it emits twice) and merge keys (`<<: *x`); and it refuses what that one lets
//! through: a second document after `---`, alias bombs ("billion laughs"), nesting deep
//! enough to overflow the stack, values longer than any recipe needs. Duplicate keys, a
//! top level that is not a mapping and tags (`!x`) are refused as before.

use std::collections::HashMap;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Marker, Node, Span};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker as YamlMarker, ScanError, TScalarStyle};

use super::diag::{Diagnostic, Pos};

/// The most YAML nodes (scalars, lists, mappings; keys included) a recipe may make, every use
/// of an alias counting all the nodes it copies, and every anchor the copy it keeps for them.
/// The largest shipped recipe has under 300; the bound keeps an alias bomb (ten aliases of ten
/// aliases of …: 10⁹ nodes from a 600-byte file) to a few tens of megabytes before it is
/// refused at the alias that crosses it.
pub const MAX_NODES: usize = 250_000;

/// The deepest nesting of lists and mappings (the shipped recipes need 5): deeper trees would
/// only overflow the stack of the code that walks them.
pub const MAX_DEPTH: usize = 64;

/// The longest scalar (key or value), in characters: room for any path, name or description,
/// while a pasted blob is refused where it starts.
pub const MAX_SCALAR_CHARS: usize = 4096;

/// The recipe file's bytes as text; bytes that are not UTF-8 are refused at the first bad one,
/// by its offset and its line and column (a Latin-1 `é` in a comment, a UTF-16 file).
pub fn utf8(bytes: Vec<u8>) -> Result<String, Diagnostic> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let before = std::str::from_utf8(&bytes[..offset]).expect("valid up to here");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Diagnostic {
            pos: Pos::at(
                before.matches('\n').count() + 1,
                before[line_start..].chars().count() + 1,
            ),
            message: format!(
                "the recipe is not UTF-8 text: the byte at offset {offset} (0x{:02X}, counting from 0) is not valid UTF-8; save the file as UTF-8 (Latin-1 and UTF-16 are not read)",
                bytes[offset]
            ),
        }
    })
}

/// Reads recipe text (source 0: the recipe file) into a tree whose top level is a mapping.
pub fn load(text: &str) -> Result<Node, Diagnostic> {
    // A BOM is how some editors (Notepad, PowerShell's `Out-File`) start UTF-8; YAML allows
    // it, yaml-rust2 would read it as part of the first token. Dropping it keeps the columns
    // of line 1 the ones an editor shows.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut loader = Loader {
        text,
        frames: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        documents: 0,
        root: None,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| syntax_error(text, &e))?;
        if !loader.event(event, mark)? {
            break;
        }
    }
    Ok(loader.root.unwrap_or_else(|| {
        // No document at all (an empty file, or only comments): an empty recipe, which the
        // parser then reports as missing `data:` and `stages:` — at 1:1, so that every
        // refusal names a position.
        Node::from(MarkedMappingNode::new_empty(Span::new_start(Marker::new(
            0, 0, 1, 1,
        ))))
    }))
}

/// A finished node with what the limits need to know about it.
#[derive(Clone)]
struct Built {
    node: Node,
    /// Nodes in it, itself included.
    size: usize,
    /// Levels of lists and mappings in it (0 for a scalar).
    height: usize,
}

struct Frame {
    start: Marker,
    anchor: usize,
    size: usize,
    height: usize,
    kind: FrameKind,
}

enum FrameKind {
    Sequence(Vec<Node>),
    Mapping {
        entries: Vec<Entry>,
        /// Where each explicit key (and `<<`) was first written: duplicates are refused.
        keys: HashMap<String, Pos>,
        /// The key read, waiting for its value, and whether it is the merge key.
        key: Option<(MarkedScalarNode, bool)>,
    },
}

// A pair is the common case (a merge is rare): boxing it would allocate once more per key.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Pair(MarkedScalarNode, Node),
    /// `<<: *x` or `<<: [*x, *y]`: the mappings whose keys this one takes where it has none.
    Merge(Vec<MarkedMappingNode>),
}

/// The YAML merge key (a plain `<<`; a quoted `"<<"` is an ordinary key).
const MERGE_KEY: &str = "<<";

struct Loader<'t> {
    text: &'t str,
    frames: Vec<Frame>,
    /// Anchor id (the parser numbers every `&name`, a reused name getting a new id) → its node.
    anchors: HashMap<usize, Built>,
    nodes: usize,
    documents: usize,
    root: Option<Node>,
}

impl Loader<'_> {
    fn marker(&self, mark: YamlMarker) -> Marker {
        // yaml-rust2 counts columns from 0; positions in messages count from 1.
        Marker::new(0, mark.index(), mark.line(), mark.col() + 1)
    }

    fn error(&self, mark: YamlMarker, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            pos: Pos::from(&self.marker(mark)),
            message: message.into(),
        }
    }

    /// Handles one event; false once the stream has ended.
    fn event(&mut self, event: Event, mark: YamlMarker) -> Result<bool, Diagnostic> {
        match event {
            Event::StreamEnd => return Ok(false),
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(self.error(
                        mark,
                        "a second YAML document starts here; a recipe is one document, so the rest of the file would be ignored: remove this `---` (and what follows), or move it to a file of its own",
                    ));
                }
            }
            Event::Alias(id) => {
                let Some(built) = self.anchors.get(&id) else {
                    let name = alias_name(self.text, mark);
                    return Err(self.error(
                        mark,
                        format!("the alias `*{name}` is inside the node its anchor `&{name}` names: a recipe cannot contain itself"),
                    ));
                };
                let (size, height) = (built.size, built.height);
                if self.frames.len() + height > MAX_DEPTH {
                    return Err(self.error(mark, format!("this alias nests lists and mappings more than {MAX_DEPTH} levels deep, the most a recipe may have")));
                }
                self.count(size, mark, true)?;
                let built = self.anchors[&id].clone();
                self.complete(built, 0, mark, false)?;
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.refuse_tag(tag.as_ref(), mark)?;
                if value.len() > MAX_SCALAR_CHARS && value.chars().count() > MAX_SCALAR_CHARS {
                    return Err(self.error(
                        mark,
                        format!(
                            "a value of {} characters; values in a recipe are at most {MAX_SCALAR_CHARS}",
                            value.chars().count()
                        ),
                    ));
                }
                self.count(1, mark, false)?;
                let merge = style == TScalarStyle::Plain && value == MERGE_KEY;
                let node = MarkedScalarNode::new(Span::new_start(self.marker(mark)), value);
                let built = Built {
                    node: Node::from(node),
                    size: 1,
                    height: 0,
                };
                self.complete(built, anchor, mark, merge)?;
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                self.refuse_tag(tag.as_ref(), mark)?;
                if self.frames.len() >= MAX_DEPTH {
                    return Err(self.error(mark, format!("lists and mappings nest more than {MAX_DEPTH} levels deep here, the most a recipe may have")));
                }
                if let Some(Frame {
                    kind: FrameKind::Mapping { key: None, .. },
                    ..
                }) = self.frames.last()
                {
                    return Err(self.error(
                        mark,
                        "a mapping key must be a plain name, not a list or a mapping",
                    ));
                }
                self.count(1, mark, false)?;
                let kind = if matches!(event, Event::SequenceStart(..)) {
                    FrameKind::Sequence(Vec::new())
                } else {
                    FrameKind::Mapping {
                        entries: Vec::new(),
                        keys: HashMap::new(),
                        key: None,
                    }
                };
                self.frames.push(Frame {
                    start: self.marker(mark),
                    anchor,
                    size: 1,
                    height: 1,
                    kind,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = self
                    .frames
                    .pop()
                    .expect("the parser balances starts and ends");
                let span = Span::new_with_marks(frame.start, self.marker(mark));
                let node = match frame.kind {
                    FrameKind::Sequence(items) => Node::from(MarkedSequenceNode::new(span, items)),
                    FrameKind::Mapping { entries, keys, .. } => {
                        Node::from(merged(MarkedMappingNode::new_empty(span), entries, &keys))
                    }
                };
                let built = Built {
                    node,
                    size: frame.size,
                    height: frame.height,
                };
                self.complete(built, frame.anchor, mark, false)?;
            }
        }
        Ok(true)
    }

    fn refuse_tag(&self, tag: Option<&Tag>, mark: YamlMarker) -> Result<(), Diagnostic> {
        match tag {
            Some(_) => Err(self.error(
                mark,
                "YAML tags (!name) are not supported in recipes; write the plain value",
            )),
            None => Ok(()),
        }
    }

    /// Counts `n` more nodes against [`MAX_NODES`].
    fn count(&mut self, n: usize, mark: YamlMarker, alias: bool) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes <= MAX_NODES {
            return Ok(());
        }
        let why = if alias {
            format!(" (each use of an alias copies its anchor's node; this one adds {n} nodes)")
        } else {
            String::new()
        };
        Err(self.error(
            mark,
            format!("the recipe grows past {MAX_NODES} YAML nodes here{why}, the most a recipe may have; this guards against alias bombs"),
        ))
    }

    /// Puts a finished node where it belongs: under its anchor, and into the list or mapping
    /// being read (or as the document, at the top).
    fn complete(
        &mut self,
        built: Built,
        anchor: usize,
        mark: YamlMarker,
        merge_key: bool,
    ) -> Result<(), Diagnostic> {
        if anchor != 0 {
            // The copy kept for later aliases is memory too: counted, so that anchors nested
            // in anchors cannot hold many copies of one large node.
            self.count(built.size, mark, false)?;
            self.anchors.insert(anchor, built.clone());
        }
        let Some(frame) = self.frames.last_mut() else {
            if built.node.as_mapping().is_none() {
                return Err(Diagnostic {
                    pos: Pos::from(built.node.span()),
                    message: "a recipe is a mapping with `data:` and `stages:` at the top level"
                        .into(),
                });
            }
            self.root = Some(built.node);
            return Ok(());
        };
        frame.size += built.size;
        frame.height = frame.height.max(built.height + 1);
        match &mut frame.kind {
            FrameKind::Sequence(items) => items.push(built.node),
            FrameKind::Mapping {
                key: key @ None, ..
            } => {
                let Node::Scalar(k) = built.node else {
                    return Err(self.error(
                        mark,
                        "a mapping key must be a plain name, not a list or a mapping",
                    ));
                };
                *key = Some((k, merge_key));
            }
            FrameKind::Mapping {
                key: key @ Some(_),
                keys,
                entries,
            } => {
                let (k, merge) = key.take().expect("matched Some");
                let at = Pos::from(k.span());
                if let Some(first) = keys.get(k.as_str()) {
                    let message = format!(
                        "duplicate key `{}` (first defined at line {})",
                        k.as_str(),
                        first.line
                    );
                    return Err(Diagnostic { pos: at, message });
                }
                keys.insert(k.as_str().to_string(), at);
                if merge {
                    let maps = merge_sources(built.node).ok_or_else(|| Diagnostic {
                        pos: at,
                        message: "`<<` merges a mapping into this one: write `<<: *name` (an anchored mapping) or `<<: [*a, *b]`".into(),
                    })?;
                    entries.push(Entry::Merge(maps));
                } else {
                    entries.push(Entry::Pair(k, built.node));
                }
            }
        }
        Ok(())
    }
}

/// The mappings a `<<:` value names: one mapping, or a list of mappings.
fn merge_sources(node: Node) -> Option<Vec<MarkedMappingNode>> {
    match node {
        Node::Mapping(m) => Some(vec![m]),
        Node::Sequence(s) => s
            .iter()
            .map(|n| n.as_mapping().cloned())
            .collect::<Option<Vec<_>>>(),
        Node::Scalar(_) => None,
    }
}

/// A mapping's entries in order, each `<<` contributing the keys of its mappings that the
/// mapping does not write itself (an earlier mapping in a `<<: [*a, *b]` list winning over a
/// later one), at the place of the `<<`.
fn merged(
    mut out: MarkedMappingNode,
    entries: Vec<Entry>,
    explicit: &HashMap<String, Pos>,
) -> MarkedMappingNode {
    for entry in entries {
        match entry {
            Entry::Pair(k, v) => {
                out.insert(k, v);
            }
            Entry::Merge(maps) => {
                for map in maps {
                    for (k, v) in map.iter() {
                        if !explicit.contains_key(k.as_str()) && !out.contains_key(k.as_str()) {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

/// The name after the `*` of the alias at `mark`, read back from the text.
fn alias_name(text: &str, mark: YamlMarker) -> String {
    text.lines()
        .nth(mark.line().saturating_sub(1))
        .map(|l| {
            l.chars()
                .skip(mark.col() + 1)
                .take_while(|c| !c.is_whitespace() && !",[]{}".contains(*c))
                .collect()
        })
        .unwrap_or_default()
}

/// A syntax error at its position, with what is probably wrong when the parser's words do not
/// say it (mostly indentation).
fn syntax_error(text: &str, e: &ScanError) -> Diagnostic {
    let mark = e.marker();
    let hint = hint(text, mark.line(), e.info());
    Diagnostic {
        pos: Pos::at(mark.line(), mark.col() + 1),
        message: format!("invalid YAML: {}{hint}", e.info()),
    }
}

/// Leading spaces of a line, and whether its indentation holds a tab.
fn indentation(line: &str) -> (usize, bool) {
    let lead: &str = &line[..line.len() - line.trim_start().len()];
    (
        lead.chars().take_while(|&c| c == ' ').count(),
        lead.contains('\t'),
    )
}

/// Lines with content (not blank, not only a comment), numbered from 1.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
}

fn spaces(n: usize) -> String {
    format!("{n} space{}", if n == 1 { "" } else { "s" })
}

/// A hint for the syntax error reported at `line` (1-based).
fn hint(text: &str, line: usize, info: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    // Tabs: YAML indents with spaces only, and an editor shows a tab as any width. The
    // parser may stop a line before or after the tab (a plain value runs on into the next).
    if let Some(n) = (line.saturating_sub(1).max(1)..=line + 1).find(|&n| {
        lines
            .get(n - 1)
            .is_some_and(|l| indentation(l).1 || (info.contains("tab") && l.contains('\t')))
    }) {
        return format!(
            " — line {n} has a tab character; YAML indents with spaces only: replace the tab with spaces"
        );
    }
    let Some(&here) = lines.get(line.saturating_sub(1)) else {
        if info.contains("quoted scalar") {
            return " — a quote is not closed".into();
        }
        return String::new();
    };
    let (indent, _) = indentation(here);
    let previous = content_lines(text).take_while(|&(n, _)| n < line).last();
    let levels_above = || -> Vec<usize> {
        // The indentations of the levels open above this line: where a key may start.
        let mut levels: Vec<usize> = Vec::new();
        for (_, l) in content_lines(text).take_while(|&(n, _)| n < line) {
            let (i, _) = indentation(l);
            while levels.last().is_some_and(|&top| top > i) {
                levels.pop();
            }
            if levels.last() != Some(&i) {
                levels.push(i);
            }
        }
        levels
    };
    if info.starts_with("mapping values are not allowed") {
        if let Some((p, above)) = previous {
            let (above_indent, _) = indentation(above);
            let has_value = above
                .split_once(':')
                .is_some_and(|(_, v)| !v.trim().is_empty() && !v.trim().starts_with('#'));
            if indent > above_indent && has_value {
                return format!(
                    " — line {line} is indented {}, more than line {p} ({above_indent}), which already has a value: indent it {} to make it a key beside line {p}'s, or end line {p} after its `:` to nest it there",
                    spaces(indent),
                    spaces(above_indent)
                );
            }
        }
        return " — a value that contains `: ` must be quoted (`key: \"a: b\"`)".into();
    }
    if info.contains("did not find expected key")
        || info.contains("did not find expected '-' indicator")
        || info.starts_with("invalid indentation")
    {
        let levels = levels_above();
        let mut list: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
        let last = list.pop().unwrap_or_else(|| "0".into());
        let columns = if list.is_empty() {
            last
        } else {
            format!("{} or {last}", list.join(", "))
        };
        let what = if info.contains("'-'") {
            "the `- ` items of one list must start at the same column"
        } else {
            "the keys of one mapping must start at the same column"
        };
        return format!(
            " — line {line} is indented {}, but the lines above it start at {columns} spaces; {what}",
            spaces(indent)
        );
    }
    if info.contains("flow mapping") || info.contains("flow sequence") {
        return " — a `{…}` or `[…]` misses a `,` or its closing bracket (a value with `,`, `:`, `[` or `{` in it must be quoted)".into();
    }
    if info.contains("quoted scalar") {
        return " — a quote is not closed, or a `\\` escape is not valid (use single quotes for text with backslashes)".into();
    }
    if info.starts_with("unexpected character") {
        return " — `@` and the backquote cannot start a plain value; quote it".into();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Diagnostic {
        load(text).map(|_| ()).unwrap_err()
    }

    #[test]
    fn aliases_copy_the_anchored_node_and_keep_its_position() {
        let n = load("a: &x {k: [1, 2]}\nb: *x\n").unwrap();
        let m = n.as_mapping().unwrap();
        let b = m.get_mapping("b").unwrap();
        let k = b.get_sequence("k").unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(Pos::from(k.span()), Pos::at(1, 11));
        assert_eq!(Pos::from(m.get_node("b").unwrap().span()), Pos::at(1, 7));
    }

    #[test]
    fn merge_keys_take_the_keys_a_mapping_does_not_write() {
        let n =
            load("d: &d {x: 1, y: 2}\ne: &e {y: 3, z: 4}\nm:\n  x: 0\n  <<: [*d, *e]\n  w: 5\n")
                .unwrap();
        let m = n.as_mapping().unwrap().get_mapping("m").unwrap();
        let got: Vec<(String, String)> = m
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.as_scalar().unwrap().as_str().into()))
            .collect();
        let want = [("x", "0"), ("y", "2"), ("z", "4"), ("w", "5")];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        let quoted = load("m: {\"<<\": 1}\n").unwrap();
        assert!(quoted
            .as_mapping()
            .unwrap()
            .get_mapping("m")
            .unwrap()
            .get_node("<<")
            .is_some());
        assert!(err("m: {<<: 1}\n")
            .message
            .contains("`<<` merges a mapping"));
    }

    #[test]
    fn the_first_byte_that_is_not_utf8_is_located_in_characters() {
        let mut bytes = "a: 1\nbé: ".as_bytes().to_vec();
        bytes.push(0xFF);
        let d = utf8(bytes).unwrap_err();
        // Offset in bytes (é is two), column in characters.
        assert_eq!(d.pos, Pos::at(2, 5));
        assert!(d.message.contains("offset 10 (0xFF"), "{}", d.message);
        assert_eq!(utf8(b"a: 1\n".to_vec()).unwrap(), "a: 1\n");
    }

    #[test]
    fn a_bom_is_not_part_of_the_first_key() {
        let n = load("\u{feff}# comment\nname: x\n").unwrap();
        let name = n.as_mapping().unwrap().get_node("name").unwrap();
        assert_eq!(Pos::from(name.span()), Pos::at(2, 7));
    }

    #[test]
    fn refused_shapes_are_reported_where_they_are() {
        let e = err("a: 1\n---\nb: 2\n");
        assert_eq!(e.pos, Pos::at(2, 1));
        assert!(e.message.contains("second YAML document"), "{}", e.message);
        let e = err("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            (e.pos, e.message.as_str()),
            (Pos::at(3, 1), "duplicate key `a` (first defined at line 1)")
        );
        assert!(err("- 1\n").message.contains("a recipe is a mapping"));
        assert!(err("a: !x 1\n").message.contains("tags"));
        let e = err("a: &x [1, *x]\n");
        assert_eq!(e.pos, Pos::at(1, 11));
        assert!(e.message.contains("`*x`"), "{}", e.message);
        assert!(err("a:\n  [1]: 2\n")
            .message
            .contains("mapping key must be a plain name"));
        let deep = format!("a: {}{}\n", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(err(&deep).message.contains("levels deep"));
        let long = format!("a: {}\n", "x".repeat(MAX_SCALAR_CHARS + 1));
        assert!(err(&long).message.contains("at most 4096"));
        assert!(load(&format!("a: {}\n", "é".repeat(MAX_SCALAR_CHARS))).is_ok());
    }

    #[test]
    fn anchors_nested_in_anchors_count_the_copies_they_keep() {
        // 20 anchored lists, one inside the other, around 20,000 scalars: 20,020 nodes in the
        // tree, but every anchor keeps a copy of its list for aliases (400,000 more nodes, 2 GB
        // at 60 levels of 200,000 before they were counted).
        let levels = 20;
        let text = format!(
            "x: {}{}{}\n",
            (0..levels).map(|i| format!("&a{i} [")).collect::<String>(),
            vec!["1"; 20_000].join(", "),
            "]".repeat(levels)
        );
        let e = err(&text);
        assert!(
            e.message.contains("grows past 250000 YAML nodes"),
            "{}",
            e.message
        );
        // Twelve levels fit (about 240,000 nodes with the copies).
        let fits = format!(
            "x: {}{}{}\n",
            (0..12).map(|i| format!("&a{i} [")).collect::<String>(),
            vec!["1"; 10_000].join(", "),
            "]".repeat(12)
        );
        assert!(load(&fits).is_ok());
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_bound() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = err(&text);
        assert!(e.message.contains("250000 YAML nodes"), "{}", e.message);
        // a0 is 11 nodes, a1 111, …, a4 111111 (held twice: in the tree and for its
        // aliases): its first copy, in a5 on line 6, takes the total past the bound; the 10⁹
        // nodes of a9 are never built.
        assert_eq!(e.pos, Pos::at(6, 10), "{}", e.message);
        assert!(e.message.contains("adds 111111 nodes"), "{}", e.message);
    }
}
