//! `model:`: the architecture a training stage builds.

use marked_yaml::Node;

use super::parser::Parser;
use crate::ml::model::{InputShape, ModelSpec};

pub(crate) const MODEL_KEYS: &[&str] = &[
    "kind",
    "hidden",
    "channels",
    "depth",
    "width",
    "embedding",
    "l2norm",
    "classes",
];
pub(crate) const MODEL_KINDS: &[&str] = &["mlp", "convnet", "resnet"];

impl Parser {
    /// A model, checked against the shape of the data it will see when that is known
    /// without reading files (a ResNet cannot halve a 1×1 "image" of synthetic features).
    pub(super) fn model(
        &mut self,
        node: &Node,
        what: &str,
        input: Option<(usize, usize, usize)>,
    ) -> Option<ModelSpec> {
        let m = self.mapping(node, what)?;
        let kind = self.choice(
            m,
            "kind",
            node.span(),
            what,
            "model",
            MODEL_KINDS,
            Some("mlp"),
        )?;
        let own: &[&str] = match kind.as_str() {
            "mlp" => &["hidden"],
            "convnet" => &["channels"],
            _ => &["depth", "width"],
        };
        let allowed: Vec<&str> = ["kind", "embedding", "l2norm", "classes"]
            .iter()
            .chain(own)
            .copied()
            .collect();
        self.check_keys(m, &allowed, &format!("{what} ({kind})"));
        let widths = |p: &mut Self, key: &str, default: Vec<usize>| match m.get_node(key) {
            Some(n) => p.list(n, &format!("{what}.{key}"), |p, n, w| {
                p.uint::<usize>(n, w, 1)
            }),
            None => Some(default),
        };
        let embedding = self.uint_or(m, "embedding", what, 1, 128usize);
        let l2norm = match m.get_node("l2norm") {
            Some(n) => self.boolean(n, &format!("{what}.l2norm")),
            None => Some(false),
        };
        let classes = match m.get_node("classes") {
            Some(n) => self.uint(n, &format!("{what}.classes"), 2).map(Some),
            None => Some(None),
        };
        let spec = match kind.as_str() {
            "mlp" => {
                let hidden = widths(self, "hidden", vec![256]);
                ModelSpec::Mlp {
                    hidden: hidden?,
                    embedding: embedding?,
                    l2norm: l2norm?,
                    classes: classes?,
                }
            }
            "convnet" => {
                let channels = widths(self, "channels", vec![32, 64]);
                ModelSpec::Convnet {
                    channels: channels?,
                    embedding: embedding?,
                    l2norm: l2norm?,
                    classes: classes?,
                }
            }
            _ => {
                let depth = match m.get_node("depth") {
                    Some(n) => self.uint(n, &format!("{what}.depth"), 1),
                    None => {
                        self.err(
                            node.span(),
                            format!("{what}: missing `depth:` (6n+2: 8, 14, 20, 32, …)"),
                        );
                        None
                    }
                };
                let width = self.uint_or(m, "width", what, 1, 16usize);
                ModelSpec::Resnet {
                    depth: depth?,
                    width: width?,
                    embedding: embedding?,
                    l2norm: l2norm?,
                    classes: classes?,
                }
            }
        };
        if let Err(e) = spec.validate() {
            let at = m.get_node("depth").map_or(node.span(), |n| n.span());
            self.err(at, format!("{what}: {e}"));
            return None;
        }
        if let Some((c, h, w)) = input {
            let shape = InputShape {
                channels: c,
                height: h,
                width: w,
            };
            if let Err(e) = crate::ml::model::check_input(&spec, shape) {
                self.err(node.span(), format!("{what}: {e}"));
                return None;
            }
        }
        Some(spec)
    }
}
