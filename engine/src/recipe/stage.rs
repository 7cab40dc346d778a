//! `stages:`: each stage as it runs, once the expansion has made its variants, and the
//! checks that need every stage (the outputs a loss term compares).

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::data::DataDecl;
use super::diag::{self, Diagnostic};
use super::keys::{self, STAGE_KINDS};
use super::parser::Parser;
use super::{expand, StageDecl};
use crate::ml::data::DataSpec;
use crate::ml::model::Tap;
use crate::ml::sampler::SamplerSpec;
use crate::spec::{
    EvalConfig, FewShotSpec, Loss, Optimizer, Probe, Protocol, StageConfig, TrainConfig,
    TransferConfig, ROLE_TEACHER,
};

pub(crate) const OPT_KINDS: &[&str] = &["adam", "sgd"];

/// What every stage of a recipe may refer to.
pub(super) struct StageContext<'a> {
    data: &'a [DataDecl],
    recipe_seed: u64,
}

impl Parser {
    pub(super) fn stages(
        &mut self,
        node: &Node,
        defaults: Option<&Node>,
        data: &[DataDecl],
        seed: u64,
    ) -> Vec<StageDecl> {
        let Some(m) = self.mapping(node, "stages") else {
            return Vec::new();
        };
        if m.is_empty() {
            self.err(node.span(), "stages: declare at least one stage");
        }
        for k in m.keys() {
            self.check_name(k, "stage");
        }
        let defaults = defaults.and_then(|d| {
            let dm = self.mapping(d, "defaults")?;
            self.check_keys(dm, &keys::default_keys(), "defaults");
            Some(dm)
        });
        let expanded = expand::Expander {
            diags: &mut self.diags,
        }
        .expand(m, defaults);
        let ctx = StageContext {
            data,
            recipe_seed: seed,
        };
        let mut out = Vec::with_capacity(expanded.len());
        for e in expanded {
            let what = format!("stages.{}", e.name);
            let at = *m
                .keys()
                .find(|k| k.as_str() == e.base)
                .map(|k| k.span())
                .expect("expanded from a declared stage");
            if let Some((kind, config)) = self.stage(&e.node, &at, &what, &ctx) {
                out.push(StageDecl {
                    name: e.name,
                    base: e.base,
                    kind,
                    pos: e.pos,
                    config,
                    inputs: e.inputs,
                    params: e.params,
                });
            }
        }
        self.check_outputs(&out);
        out
    }

    /// Checks that every loss term acts on an output both of its models have: this needs the
    /// teacher's model, so it runs once every stage is parsed.
    pub(super) fn check_outputs(&mut self, stages: &[StageDecl]) {
        // By name through a map: a linear search per stage made long chains quadratic.
        let by_name: std::collections::HashMap<&str, &StageDecl> =
            stages.iter().map(|s| (s.name.as_str(), s)).collect();
        let model_of = |name: &str| {
            by_name
                .get(name)
                .and_then(|s| s.config.training().map(|c| &c.model))
        };
        for s in stages {
            let (StageConfig::Train(cfg) | StageConfig::Distill(cfg)) = &s.config else {
                continue;
            };
            let teacher = s
                .inputs
                .iter()
                .find(|r| r.role == ROLE_TEACHER)
                .and_then(|r| model_of(&r.stage).map(|m| (r.stage.as_str(), m)));
            for term in &cfg.loss {
                let what = format!("stages.{}.loss.{}", s.name, term.name());
                let pos = self.term_pos.get(&what).copied().unwrap_or(s.pos);
                let mut problems = Vec::new();
                let explain = |tap: Tap, model: &crate::ml::model::ModelSpec| match tap {
                    Tap::Logits => "give it `classes: N` for a classifier head".to_string(),
                    Tap::Hidden(_) => match model.hidden_taps() {
                        0 => "it has no hidden layer".to_string(),
                        1 => "it has one hidden layer, hidden1".to_string(),
                        h => format!("its hidden layers are hidden1..hidden{h}"),
                    },
                    Tap::Embedding => String::new(),
                };
                let student_dim = cfg.model.tap_dim(term.on);
                if student_dim.is_none() {
                    problems.push(format!(
                        "{what}: the model of `{}` has no `{}` output ({})",
                        s.name,
                        term.on,
                        explain(term.on, &cfg.model)
                    ));
                }
                if let (true, Some((tname, tmodel))) = (term.loss.needs_teacher(), teacher) {
                    let teacher_dim = tmodel.tap_dim(term.on);
                    match teacher_dim {
                        None => problems.push(format!(
                            "{what}: the teacher `{tname}` has no `{}` output ({})",
                            term.on,
                            explain(term.on, tmodel)
                        )),
                        Some(td) if matches!(term.loss, Loss::Kd { .. }) && student_dim.is_some_and(|sd| sd != td) => {
                            problems.push(format!(
                                "{what}: the student has {} classes and the teacher `{tname}` {td}; KD compares class distributions of the same size",
                                student_dim.unwrap_or(0)
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if matches!(term.loss, Loss::Ce) {
                    let n = cfg.data.train_classes.len();
                    if student_dim.is_some_and(|c| c != n) {
                        problems.push(format!(
                            "{what}: the model has {} classes but the data set trains on {n} (`classes: {n}`)",
                            student_dim.unwrap_or(0)
                        ));
                    }
                }
                for message in problems {
                    self.diags.push(Diagnostic { pos, message });
                }
            }
        }
    }

    /// One stage as it runs (references already resolved by the expansion).
    pub(super) fn stage(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        ctx: &StageContext,
    ) -> Option<(String, StageConfig)> {
        let kind = self.choice(m, "kind", at, what, "stage kind", STAGE_KINDS, None)?;
        let allowed = keys::stage_keys(&kind).expect("checked by choice");
        self.check_keys(m, allowed, &format!("{what} ({kind})"));
        if let Some(n) = m.get_node("description") {
            self.scalar(n, &format!("{what}.description"), "text");
        }
        for &role in keys::reference_keys(&kind) {
            if m.get_node(role).is_none() {
                let purpose = if role == "teacher" {
                    "the stage whose model teaches this one"
                } else {
                    "the stage whose model is evaluated"
                };
                self.err(at, format!("{what}: missing `{role}:` ({purpose})"));
            }
        }
        if kind == "transfer" && m.get_node("data").is_none() {
            self.err(
                at,
                format!(
                    "{what}: missing `data:` (the data set or domain the model is transferred to)"
                ),
            );
            return None;
        }
        let data_spec = self.data_ref(m, at, what, ctx.data);
        let recall_at = |p: &mut Self| match m.get_node("recall_at") {
            Some(n) => p.list(n, &format!("{what}.recall_at"), |p, n, w| {
                p.uint::<usize>(n, w, 1)
            }),
            None => Some(vec![1, 2, 4, 8]),
        };
        let unseen_needed = match kind.as_str() {
            "evaluate" => m
                .get_scalar("protocol")
                .is_none_or(|p| p.as_str() == "metric"),
            "transfer" => true,
            _ => false,
        };
        if let (true, Some(d)) = (unseen_needed, &data_spec) {
            if d.eval_classes.is_empty() {
                let at = m.get_node("data").map_or(at, |n| n.span());
                self.err(
                    at,
                    format!("{what}: its data set has no `eval_classes`, so there are no unseen classes to retrieve; use `protocol: classification` or give the data set eval_classes"),
                );
            }
        }
        let config = match kind.as_str() {
            "evaluate" => {
                let protocol = self.choice(
                    m,
                    "protocol",
                    at,
                    what,
                    "protocol",
                    &["metric", "classification"],
                    Some("metric"),
                );
                let nmi = match m.get_node("nmi") {
                    Some(n) => self.boolean(n, &format!("{what}.nmi")),
                    None => Some(true),
                };
                let few_shot = match m.get_node("few_shot") {
                    Some(n) => self.few_shot(n, &format!("{what}.few_shot")).map(Some),
                    None => Some(None),
                };
                let protocol = match protocol?.as_str() {
                    "classification" => Protocol::Classification,
                    _ => Protocol::Metric,
                };
                if protocol == Protocol::Classification {
                    for key in ["recall_at", "nmi", "few_shot"] {
                        if let Some(n) = m.get_node(key) {
                            self.err(n.span(), format!("{what}.{key}: applies to the metric protocol, not to classification"));
                        }
                    }
                }
                StageConfig::Evaluate(EvalConfig {
                    recall_at: recall_at(self)?,
                    nmi: nmi?,
                    few_shot: few_shot?,
                    protocol,
                    data: data_spec?,
                })
            }
            "transfer" => {
                let probe = match m.get_node("probe") {
                    Some(n) => self.probe(n, &format!("{what}.probe")).map(Some),
                    None => Some(None),
                };
                StageConfig::Transfer(TransferConfig {
                    recall_at: recall_at(self)?,
                    probe: probe?,
                    data: data_spec?,
                })
            }
            _ => {
                let distill = kind != "train";
                let seed = stage_seed(m, self, what, ctx.recipe_seed);
                let cfg = self.train_config(m, at, what, data_spec, seed, distill);
                if distill {
                    StageConfig::Distill(cfg?)
                } else {
                    StageConfig::Train(cfg?)
                }
            }
        };
        Some((kind, config))
    }

    pub(super) fn data_ref(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        data: &[DataDecl],
    ) -> Option<DataSpec> {
        let names: Vec<&str> = data.iter().map(|d| d.name.as_str()).collect();
        match m.get_node("data") {
            Some(n) => {
                let target = self.string(n, &format!("{what}.data"))?;
                match data.iter().find(|d| d.name == target) {
                    Some(d) => Some(d.spec.clone()),
                    None => {
                        self.err(
                            n.span(),
                            format!(
                                "{what}.data: no data set named `{target}`{}",
                                diag::hint(&target, &names)
                            ),
                        );
                        None
                    }
                }
            }
            None if data.len() == 1 => Some(data[0].spec.clone()),
            None => {
                if !data.is_empty() {
                    self.err(
                        at,
                        format!("{what}: missing `data:` (one of {})", names.join(", ")),
                    );
                }
                None
            }
        }
    }

    pub(super) fn train_config(
        &mut self,
        m: &MarkedMappingNode,
        at: &Span,
        what: &str,
        data: Option<DataSpec>,
        seed: Option<u64>,
        distill: bool,
    ) -> Option<TrainConfig> {
        let model = match m.get_node("model") {
            Some(n) => self.model(
                n,
                &format!("{what}.model"),
                data.as_ref().and_then(|d| d.source.shape()),
            ),
            None => {
                self.err(at, format!("{what}: missing `model:` (e.g. {{kind: mlp, hidden: [256], embedding: 64}})"));
                None
            }
        };
        let loss = match m.get_node("loss") {
            Some(n) => self.loss(n, &format!("{what}.loss"), distill),
            None => {
                self.err(at, format!("{what}: missing `loss:` (e.g. {{rkd_d: 1.0, rkd_a: 2.0}} or {{triplet: 1.0}})"));
                None
            }
        };
        let optimizer = match m.get_node("optimizer") {
            Some(n) => self.optimizer(n, &format!("{what}.optimizer")),
            None => Some(Optimizer::Adam {
                lr: 1e-3,
                weight_decay: 0.0,
            }),
        };
        let epochs = self.uint_or(m, "epochs", what, 0, 10usize);
        let batch_node = m.get_node("batch_size");
        let batch_size = self.uint_or(m, "batch_size", what, 3, 128usize);
        let n_train_classes = data.as_ref().map(|d| d.train_classes.len());
        let sampler = match (m.get_node("sampler"), batch_size) {
            (Some(n), Some(bs)) => self.sampler(
                n,
                &format!("{what}.sampler"),
                bs,
                batch_node.is_some(),
                n_train_classes,
                distill,
            ),
            (None, _) => Some(SamplerSpec::Random),
            (Some(_), None) => None,
        };
        let sampler = sampler?;
        Some(TrainConfig {
            data: data?,
            model: model?,
            loss: loss?,
            optimizer: optimizer?,
            epochs: epochs?,
            batch_size: sampler.batch_size(batch_size?),
            seed: seed?,
            sampler,
        })
    }

    /// `few_shot: {ways: 5, shots: 1, queries: 15, episodes: 600}` (those are the defaults).
    pub(super) fn few_shot(&mut self, node: &Node, what: &str) -> Option<FewShotSpec> {
        let m = self.mapping(node, what)?;
        self.check_keys(m, &["ways", "shots", "queries", "episodes"], what);
        let ways = self.uint_or(m, "ways", what, 2, 5usize);
        let shots = self.uint_or(m, "shots", what, 1, 1usize);
        let queries = self.uint_or(m, "queries", what, 1, 15usize);
        let episodes = self.uint_or(m, "episodes", what, 1, 600usize);
        Some(FewShotSpec {
            ways: ways?,
            shots: shots?,
            queries: queries?,
            episodes: episodes?,
        })
    }

    /// `probe: true` (the defaults) or `probe: {epochs, lr, batch_size}`.
    pub(super) fn probe(&mut self, node: &Node, what: &str) -> Option<Probe> {
        let defaults = Probe {
            epochs: 20,
            lr: 0.01,
            batch_size: 256,
        };
        if node.as_scalar().is_some() {
            return match self.boolean(node, what)? {
                true => Some(defaults),
                false => {
                    self.err(
                        node.span(),
                        format!("{what}: leave `probe:` out to skip the linear probe"),
                    );
                    None
                }
            };
        }
        let m = self.mapping(node, what)?;
        self.check_keys(m, &["epochs", "lr", "batch_size"], what);
        let epochs = self.uint_or(m, "epochs", what, 1, defaults.epochs);
        let lr = match m.get_node("lr") {
            Some(n) => self.float(n, &format!("{what}.lr"), 0.0, true),
            None => Some(defaults.lr),
        };
        let batch_size = self.uint_or(m, "batch_size", what, 1, defaults.batch_size);
        Some(Probe {
            epochs: epochs?,
            lr: lr?,
            batch_size: batch_size?,
        })
    }

    pub(super) fn optimizer(&mut self, node: &Node, what: &str) -> Option<Optimizer> {
        let m = self.mapping(node, what)?;
        let kind = self.choice(
            m,
            "kind",
            node.span(),
            what,
            "optimizer",
            OPT_KINDS,
            Some("adam"),
        )?;
        let allowed: &[&str] = if kind == "adam" {
            &["kind", "lr", "weight_decay"]
        } else {
            &["kind", "lr"]
        };
        self.check_keys(m, allowed, &format!("{what} ({kind})"));
        let lr = match m.get_node("lr") {
            Some(n) => self.float(n, &format!("{what}.lr"), 0.0, true),
            None => Some(if kind == "adam" { 1e-3 } else { 0.01 }),
        };
        if kind == "adam" {
            let weight_decay = match m.get_node("weight_decay") {
                Some(n) => self.float(n, &format!("{what}.weight_decay"), 0.0, false),
                None => Some(0.0),
            };
            Some(Optimizer::Adam {
                lr: lr?,
                weight_decay: weight_decay?,
            })
        } else {
            Some(Optimizer::Sgd { lr: lr? })
        }
    }
}

/// The stage's `seed:`, defaulting to the recipe's.
fn stage_seed(m: &MarkedMappingNode, p: &mut Parser, what: &str, recipe_seed: u64) -> Option<u64> {
    p.uint_or(m, "seed", what, 0, recipe_seed)
}
