//! `loss:`: the weighted terms of a training stage's loss, each read as its declaration in
//! [`spec::DECLS`] says (its keys, their types, ranges and defaults).

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::diag;
use super::parser::Parser;
use crate::ml::model::Tap;
use crate::spec::{self, Loss, LossDecl, LossTerm, OptionType, OptionValue};

impl Parser {
    pub(super) fn loss(&mut self, node: &Node, what: &str, distill: bool) -> Option<Vec<LossTerm>> {
        let m = self.mapping(node, what)?;
        if m.is_empty() {
            self.err(
                node.span(),
                format!(
                    "{what}: name at least one loss term ({})",
                    Loss::NAMES.join(", ")
                ),
            );
            return None;
        }
        let mut terms = Vec::new();
        let mut ok = true;
        for (k, v) in m.iter() {
            let name = k.as_str();
            let w = format!("{what}.{name}");
            let Some(decl) = spec::decl(name) else {
                self.err(
                    k.span(),
                    format!(
                        "{what}: unknown loss `{name}`{}",
                        diag::hint(name, &Loss::NAMES)
                    ),
                );
                ok = false;
                continue;
            };
            match self.term(decl, v, k.span(), &w) {
                Some(_) if decl.teacher && !distill => {
                    self.err(
                        k.span(),
                        format!("{w}: `{name}` compares with a teacher; use `kind: distill` with `teacher: STAGE`"),
                    );
                    ok = false;
                }
                Some(t) => terms.push(t),
                None => ok = false,
            }
        }
        if ok && terms.iter().all(|t| t.weight == 0.0) {
            self.err(
                node.span(),
                format!("{what}: every weight is 0, so nothing would be learned"),
            );
            return None;
        }
        // Canonical order: the recipe's order of terms does not change the key.
        terms.sort_by(|a, b| a.name().cmp(b.name()));
        ok.then_some(terms)
    }

    /// One term: `name: WEIGHT` or `name: {weight: W, ...options}`. Records where its
    /// `on:` (or the term itself) is, for the checks that need the models.
    fn term(
        &mut self,
        decl: &'static LossDecl,
        node: &Node,
        at: &Span,
        what: &str,
    ) -> Option<LossTerm> {
        self.term_pos.insert(what.to_string(), at.into());
        if node.as_scalar().is_some() {
            let weight = self.float(node, &format!("{what} (weight)"), 0.0, false)?;
            return Some(LossTerm {
                loss: decl.defaults(),
                weight,
                on: decl.default_on,
                keep: None,
            });
        }
        let m = self.mapping(node, what)?;
        self.check_keys(m, &decl.keys(), what);
        let weight = match m.get_node("weight") {
            Some(n) => self.float(n, &format!("{what}.weight"), 0.0, false),
            None => Some(1.0),
        };
        let on = match m.get_node("on") {
            Some(n) => {
                self.term_pos.insert(what.to_string(), n.span().into());
                let s = self.string(n, &format!("{what}.on"))?;
                let tap = Tap::parse(&s);
                if tap.is_none() {
                    self.err(
                        n.span(),
                        format!("{what}.on: unknown output `{s}`; expected embedding, logits or hiddenN (N ≥ 1)"),
                    );
                }
                tap
            }
            None => Some(decl.default_on),
        };
        let keep = match m.get_node("keep") {
            Some(n) => match self.float(n, &format!("{what}.keep"), 0.0, true) {
                Some(k) if k <= 1.0 => Some(Some(k)),
                Some(k) => {
                    self.err(
                        n.span(),
                        format!("{what}.keep: a fraction of the relations in (0, 1], found {k}"),
                    );
                    None
                }
                None => None,
            },
            None => Some(None),
        };
        let loss = self.loss_options(m, decl, at, what).map(|values| {
            decl.build(|key| values.iter().find(|(k, _)| *k == key).and_then(|(_, v)| *v))
        });
        Some(LossTerm {
            loss: loss?,
            weight: weight?,
            on: on?,
            keep: keep?,
        })
    }

    /// The options of a term written as a mapping, each as its declaration types it: the
    /// values given (absent ones take their defaults when the loss is built), or None after
    /// reporting a problem with one that applies.
    #[allow(clippy::type_complexity)]
    fn loss_options(
        &mut self,
        m: &MarkedMappingNode,
        decl: &LossDecl,
        at: &Span,
        what: &str,
    ) -> Option<Vec<(&'static str, Option<OptionValue>)>> {
        let mut values: Vec<(&'static str, Option<OptionValue>)> = Vec::new();
        for o in decl.options {
            let Some(n) = m.get_node(o.key) else {
                continue;
            };
            let key = format!("{what}.{}", o.key);
            let value = match o.ty {
                OptionType::Number { min, strict, .. } => {
                    self.float(n, &key, min, strict).map(OptionValue::Number)
                }
                OptionType::Whole { min, .. } => self
                    .uint::<u32>(n, &key, u64::from(min))
                    .map(OptionValue::Whole),
                OptionType::Name { names, default } => self
                    .choice(m, o.key, at, what, o.key, names, Some(default))
                    .and_then(|v| names.iter().find(|&&name| name == v).copied())
                    .map(OptionValue::Name),
            };
            values.push((o.key, value));
        }
        let given = |key: &str| values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        // An option that does not apply under another's value (CC's `p` with a Gaussian
        // kernel) is an error where it is given; it is not read, so a bad value of it does
        // not fail the term by itself.
        let mut ok = true;
        for o in decl.options {
            let applies = match o.applies {
                None => true,
                Some((on, allowed)) => {
                    let governing = decl.options.iter().find(|g| g.key == on);
                    let value = given(on).unwrap_or(governing.map(|g| g.default()));
                    match value {
                        Some(OptionValue::Name(v)) => {
                            if allowed.contains(&v) {
                                true
                            } else {
                                if let Some(n) = m.get_node(o.key) {
                                    self.err(
                                        n.span(),
                                        format!(
                                            "{what}.{}: does not apply to the `{v}` {on}",
                                            o.key
                                        ),
                                    );
                                }
                                false
                            }
                        }
                        // The option it depends on failed: reported there.
                        _ => {
                            ok = false;
                            continue;
                        }
                    }
                }
            };
            if applies && given(o.key) == Some(None) {
                ok = false;
            }
        }
        ok.then_some(values)
    }
}
