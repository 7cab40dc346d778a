//! What changes the recipe as written before its stages expand: `--set PATH=VALUE` on the
//! command line, applied to the tree in order, and `defaults:`, merged into each stage.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use super::diag::{self, Diagnostic};
use super::expand::err;
use super::keys;

/// One `--set PATH=VALUE` of the command line.
#[derive(Debug, Clone)]
pub struct SetArg {
    /// As the user typed it, for messages.
    pub raw: String,
    pub path: Vec<String>,
    pub value: Node,
}

impl SetArg {
    /// Parses `PATH=VALUE`; the value is YAML (`3`, `0.5`, `[1, 2]`, `{kind: sgd}`).
    /// `source` numbers the argument so that positions inside it are told apart.
    pub fn parse(raw: &str, source: usize) -> Result<SetArg, String> {
        let Some((path, value)) = raw.split_once('=') else {
            return Err(format!(
                "--set {raw}: expected PATH=VALUE, e.g. --set stages.teacher.epochs=2"
            ));
        };
        let path: Vec<String> = split_path(path.trim());
        if path.is_empty() || path.iter().any(String::is_empty) {
            return Err(format!(
                "--set {raw}: the path before `=` is empty or has an empty part"
            ));
        }
        let doc = marked_yaml::parse_yaml(source, format!("v: {value}"))
            .map_err(|e| format!("--set {raw}: the value is not valid YAML ({e})"))?;
        let value = doc
            .as_mapping()
            .and_then(|m| m.get_node("v"))
            .cloned()
            .unwrap_or_else(|| Node::from(MarkedScalarNode::new(Span::new_blank(), "")));
        Ok(SetArg {
            raw: raw.to_string(),
            path,
            value,
        })
    }
}

/// Splits a dotted path; once it reaches a `matrix`, the rest is one key (matrix keys are
/// dotted paths themselves).
fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some((head, tail)) = rest.split_once('.') {
        out.push(head.to_string());
        rest = tail;
        if head == "matrix" {
            break;
        }
    }
    out.push(rest.to_string());
    out
}

/// Applies `--set` arguments to the recipe tree, in order.
pub fn apply_sets(root: &mut MarkedMappingNode, sets: &[SetArg], diags: &mut Vec<Diagnostic>) {
    for set in sets {
        let span = set.value.span().to_owned();
        // Messages are printed after `--set PATH=VALUE:` already.
        let what = "";
        let first = set.path[0].as_str();
        if !keys::TOP_KEYS.contains(&first) {
            err(
                diags,
                &span,
                format!(
                    "unknown top-level key `{first}`{}",
                    diag::hint(first, keys::TOP_KEYS)
                ),
            );
            continue;
        }
        // `stages.NAME` and `data.NAME` must exist (a typo must not create a new stage);
        // `stages.*.KEY` sets KEY on every stage whose kind accepts it.
        if matches!(first, "stages" | "data") && set.path.len() >= 3 {
            let Some(group) = root.get_mut(first).and_then(Node::as_mapping_mut) else {
                err(diags, &span, format!("the recipe has no `{first}:`"));
                continue;
            };
            let name = set.path[1].as_str();
            let rest = &set.path[2..];
            if name == "*" {
                let mut hits = 0;
                for (_, v) in group.iter_mut() {
                    let Some(m) = v.as_mapping_mut() else {
                        continue;
                    };
                    let accepts = first == "data"
                        || m.get_scalar("kind")
                            .and_then(|k| keys::stage_keys(k.as_str()))
                            .is_some_and(|ks| ks.contains(&rest[0].as_str()));
                    if accepts {
                        set_path(m, rest, set.value.clone(), what, diags);
                        hits += 1;
                    }
                }
                if hits == 0 {
                    err(
                        diags,
                        &span,
                        format!("no entry of `{first}:` accepts `{}`", rest[0]),
                    );
                }
                continue;
            }
            let names: Vec<String> = group.keys().map(|k| k.as_str().to_string()).collect();
            match group.get_mut(name).and_then(Node::as_mapping_mut) {
                Some(m) => set_path(m, rest, set.value.clone(), what, diags),
                None => {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    err(
                        diags,
                        &span,
                        format!(
                            "no entry `{name}` under `{first}:`{}",
                            diag::hint(name, &names)
                        ),
                    );
                }
            }
            continue;
        }
        set_path(root, &set.path, set.value.clone(), what, diags);
    }
}

/// Sets `path` (relative to `m`) to `value`, creating mappings on the way. A loss term
/// written as a bare weight (`cc: 1.0`) becomes `{weight: 1.0}` when one of its options is
/// set, so that `loss.cc.p` can be swept whichever way the term was written.
pub(super) fn set_path(
    m: &mut MarkedMappingNode,
    path: &[String],
    value: Node,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) {
    set_path_in(m, path, value, what, diags, false)
}

fn set_path_in(
    m: &mut MarkedMappingNode,
    path: &[String],
    value: Node,
    what: &str,
    diags: &mut Vec<Diagnostic>,
    in_loss: bool,
) {
    let key = path[0].as_str();
    if path.len() == 1 {
        let k = match m.keys().find(|k| k.as_str() == key) {
            Some(existing) => existing.clone(),
            None => MarkedScalarNode::new(value.span().to_owned(), key),
        };
        m.insert(k, value);
        return;
    }
    if !m.contains_key(key) {
        let span = value.span().to_owned();
        m.insert(
            MarkedScalarNode::new(span, key),
            Node::from(MarkedMappingNode::new_empty(span)),
        );
    }
    let child = m.get_mut(key).expect("inserted above");
    if in_loss {
        if let Node::Scalar(weight) = child {
            let span = *weight.span();
            let mut promoted = MarkedMappingNode::new_empty(span);
            promoted.insert(
                MarkedScalarNode::new(span, "weight"),
                Node::Scalar(weight.clone()),
            );
            *child = Node::from(promoted);
        }
    }
    match child.as_mapping_mut() {
        Some(cm) => set_path_in(cm, &path[1..], value, what, diags, key == "loss"),
        None => err(
            diags,
            &value.span().to_owned(),
            format!(
                "{what}{}`{key}` holds a single value or a list, so `{}` cannot be set inside it",
                if what.is_empty() { "" } else { ": " },
                path[1..].join(".")
            ),
        ),
    }
}

pub(super) fn get_path<'n>(m: &'n MarkedMappingNode, path: &[String]) -> Option<&'n Node> {
    let n = m.get_node(&path[0])?;
    match path.len() {
        1 => Some(n),
        _ => get_path(n.as_mapping()?, &path[1..]),
    }
}

/// Merges `defaults:` into a stage's mapping: absent keys are inherited; present ones win,
/// except the mappings of [`keys::MERGED_MAPPINGS`], merged key by key when their kinds agree.
pub(super) fn merge_defaults(
    stage: &mut MarkedMappingNode,
    defaults: &MarkedMappingNode,
    kind: &str,
) {
    for (k, dv) in defaults.iter() {
        if !keys::default_applies(k.as_str(), kind) {
            continue;
        }
        match stage.get_mut(k.as_str()) {
            None => {
                stage.insert(k.clone(), dv.clone());
            }
            Some(sv) if keys::MERGED_MAPPINGS.contains(&k.as_str()) => {
                let (Some(sm), Some(dm)) = (sv.as_mapping_mut(), dv.as_mapping()) else {
                    continue;
                };
                let kind_of =
                    |m: &MarkedMappingNode| m.get_scalar("kind").map(|s| s.as_str().to_string());
                let same_kind = match (kind_of(sm), kind_of(dm)) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                if same_kind {
                    for (dk, dvv) in dm.iter() {
                        if !sm.contains_key(dk.as_str()) {
                            sm.insert(dk.clone(), dvv.clone());
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
}
