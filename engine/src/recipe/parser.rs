//! The parser's state and the readers every element shares: a mapping, its keys, a choice
//! among names, scalars, whole numbers, floats, booleans and lists, each reporting a problem
//! at the node's position and going on, so that one report lists every problem.

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};
use num_traits::{PrimInt, Unsigned};

use super::diag::{self, Diagnostic, Pos};
use super::keys;

pub(super) struct Parser {
    pub(super) diags: Vec<Diagnostic>,
    /// `stages.NAME.loss.TERM` → where to report a problem with the term's output.
    pub(super) term_pos: std::collections::HashMap<String, Pos>,
}

impl Parser {
    pub(super) fn err(&mut self, span: &Span, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            pos: span.into(),
            message: message.into(),
        });
    }

    pub(super) fn mapping<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
    ) -> Option<&'n MarkedMappingNode> {
        let m = node.as_mapping();
        if m.is_none() {
            self.err(
                node.span(),
                format!("{what}: expected a mapping (`key: value` lines)"),
            );
        }
        m
    }

    /// Reports every key of `m` that is not in `allowed`.
    pub(super) fn check_keys(&mut self, m: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in m.keys() {
            if !allowed.contains(&key.as_str()) {
                self.err(
                    key.span(),
                    format!(
                        "{what}: unknown key `{}`{}",
                        key.as_str(),
                        diag::hint(key.as_str(), allowed)
                    ),
                );
            }
        }
    }

    /// `key:` of `m`, which must be one of `allowed` (`default` when absent, or an error
    /// at `at` when there is no default).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn choice(
        &mut self,
        m: &MarkedMappingNode,
        key: &str,
        at: &Span,
        what: &str,
        noun: &str,
        allowed: &[&str],
        default: Option<&str>,
    ) -> Option<String> {
        let Some(n) = m.get_node(key) else {
            if default.is_none() {
                self.err(
                    at,
                    format!("{what}: missing `{key}:` (one of {})", allowed.join(", ")),
                );
            }
            return default.map(str::to_string);
        };
        let v = self.string(n, &format!("{what}.{key}"))?;
        if allowed.contains(&v.as_str()) {
            Some(v)
        } else {
            self.err(
                n.span(),
                format!(
                    "{what}.{key}: unknown {noun} `{v}`{}",
                    diag::hint(&v, allowed)
                ),
            );
            None
        }
    }

    pub(super) fn scalar<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        expected: &str,
    ) -> Option<&'n str> {
        match node.as_scalar() {
            Some(s) => Some(s.as_str()),
            None => {
                self.err(
                    node.span(),
                    format!("{what}: expected {expected}, found a {}", shape(node)),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.scalar(node, what, "a name")?;
        if s.is_empty() {
            self.err(
                node.span(),
                format!("{what}: expected a name, found nothing"),
            );
            return None;
        }
        Some(s.to_string())
    }

    /// A name value (`name:`), checked like every name ([`keys::check_name`]).
    pub(super) fn name(&mut self, node: &Node, what: &str, dots: bool) -> Option<String> {
        let s = self.scalar(node, what, "a name")?;
        match keys::check_name(s, dots) {
            Ok(()) => Some(s.to_string()),
            Err(e) => {
                self.err(node.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    /// A declared stage or data set name (a mapping key).
    pub(super) fn check_name(&mut self, key: &marked_yaml::types::MarkedScalarNode, noun: &str) {
        if let Err(e) = keys::check_name(key.as_str(), false) {
            self.err(key.span(), format!("{noun} {e}"));
        }
    }

    /// A whole number ≥ `min` that fits the type it is read into: `classes: 4294967298` is
    /// an error at its line, never 2 (u32 wrap-around).
    pub(super) fn uint<T: PrimInt + Unsigned>(
        &mut self,
        node: &Node,
        what: &str,
        min: u64,
    ) -> Option<T> {
        let max = T::max_value().to_u64().unwrap_or(u64::MAX);
        let s = self.scalar(node, what, "a whole number")?;
        let too_large = || format!("{what}: {s} is too large; allowed: {min} to {max}");
        match s.parse::<u64>() {
            Ok(v) if v < min => {
                self.err(
                    node.span(),
                    format!("{what}: must be at least {min}, found {v}"),
                );
                None
            }
            Ok(v) => match T::from(v) {
                Some(t) => Some(t),
                None => {
                    self.err(node.span(), too_large());
                    None
                }
            },
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                self.err(node.span(), too_large());
                None
            }
            Err(_) => {
                self.err(
                    node.span(),
                    format!("{what}: expected a whole number ≥ {min}, found `{s}`"),
                );
                None
            }
        }
    }

    /// `key:` of `m` as [`Parser::uint`], or `default` when absent.
    pub(super) fn uint_or<T: PrimInt + Unsigned>(
        &mut self,
        m: &MarkedMappingNode,
        key: &str,
        what: &str,
        min: u64,
        default: T,
    ) -> Option<T> {
        match m.get_node(key) {
            Some(n) => self.uint(n, &format!("{what}.{key}"), min),
            None => Some(default),
        }
    }

    /// A finite float in `[min, ∞)` (or `(min, ∞)` when `strict`).
    pub(super) fn float(&mut self, node: &Node, what: &str, min: f64, strict: bool) -> Option<f64> {
        let s = self.scalar(node, what, "a number")?;
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && (v > min || (!strict && v == min)) => Some(v),
            Ok(v) => {
                let bound = if strict { ">" } else { "≥" };
                self.err(
                    node.span(),
                    format!("{what}: must be a finite number {bound} {min}, found {v}"),
                );
                None
            }
            Err(_) => {
                self.err(
                    node.span(),
                    format!("{what}: expected a number, found `{s}`"),
                );
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        let s = self.scalar(node, what, "true or false")?;
        match s {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.err(
                    node.span(),
                    format!("{what}: expected true or false, found `{s}`"),
                );
                None
            }
        }
    }

    pub(super) fn list<T>(
        &mut self,
        node: &Node,
        what: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Some(seq) = node.as_sequence() else {
            self.err(
                node.span(),
                format!(
                    "{what}: expected a list like [1, 2], found a {}",
                    shape(node)
                ),
            );
            return None;
        };
        let mut out = Vec::with_capacity(seq.len());
        let mut ok = true;
        for (i, n) in seq.iter().enumerate() {
            match item(self, n, &format!("{what}[{i}]")) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

fn shape(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "single value",
        Node::Mapping(_) => "mapping",
        Node::Sequence(_) => "list",
    }
}
