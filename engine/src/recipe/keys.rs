//! The recipe's vocabulary: which keys exist where. One table serves the parser, the
//! defaults/matrix expansion and the JSON Schema, so that they cannot drift apart.

pub const TOP_KEYS: &[&str] = &["name", "description", "seed", "data", "defaults", "stages"];

pub const STAGE_KINDS: &[&str] = &["train", "distill", "self_distill", "evaluate", "transfer"];

const TRAIN_KEYS: &[&str] = &[
    "kind",
    "description",
    "data",
    "model",
    "loss",
    "sampler",
    "optimizer",
    "epochs",
    "batch_size",
    "seed",
    "matrix",
];
const DISTILL_KEYS: &[&str] = &[
    "kind",
    "description",
    "teacher",
    "data",
    "model",
    "loss",
    "sampler",
    "optimizer",
    "epochs",
    "batch_size",
    "seed",
    "matrix",
];
const SELF_DISTILL_KEYS: &[&str] = &[
    "kind",
    "description",
    "teacher",
    "generations",
    "data",
    "model",
    "loss",
    "sampler",
    "optimizer",
    "epochs",
    "batch_size",
    "seed",
    "matrix",
];
const EVAL_KEYS: &[&str] = &[
    "kind",
    "description",
    "model",
    "data",
    "protocol",
    "recall_at",
    "nmi",
    "few_shot",
    "matrix",
];
const TRANSFER_KEYS: &[&str] = &[
    "kind",
    "description",
    "model",
    "data",
    "recall_at",
    "probe",
    "matrix",
];

/// Every key a stage of `kind` accepts (None for an unknown kind).
pub fn stage_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "train" => TRAIN_KEYS,
        "distill" => DISTILL_KEYS,
        "self_distill" => SELF_DISTILL_KEYS,
        "evaluate" => EVAL_KEYS,
        "transfer" => TRANSFER_KEYS,
        _ => return None,
    })
}

/// The keys of a stage of `kind` that name another stage (the edges of the DAG).
pub fn reference_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "distill" | "self_distill" => &["teacher"],
        "evaluate" | "transfer" => &["model"],
        _ => &[],
    }
}

/// Whether a stage of `kind` leaves a model other stages can use.
pub fn produces_model(kind: &str) -> bool {
    matches!(kind, "train" | "distill" | "self_distill")
}

/// Keys `defaults:` may hold: every stage key but the ones that make a stage what it is.
pub fn default_keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> = STAGE_KINDS
        .iter()
        .flat_map(|k| stage_keys(k).unwrap_or(&[]).iter().copied())
        .filter(|k| {
            !matches!(
                *k,
                "kind" | "description" | "matrix" | "teacher" | "generations"
            )
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Whether the default for `key` applies to a stage of `kind`: the stage must accept the key,
/// and not as a reference (an evaluate stage's `model:` names a stage, a training stage's
/// describes an architecture). A transfer stage's `data:` is the *other* data set, so it is
/// never inherited.
pub fn default_applies(key: &str, kind: &str) -> bool {
    stage_keys(kind).is_some_and(|keys| keys.contains(&key))
        && !reference_keys(kind).contains(&key)
        && !(kind == "transfer" && key == "data")
}

/// Keys of a `matrix:` that are not swept paths.
pub const MATRIX_SPECIAL: &[&str] = &["seeds", "exclude", "include"];

/// Mappings that `defaults:` merges key by key into a stage's own (when both have the same
/// `kind:`), rather than replacing: a stage that changes only `optimizer.lr` keeps the
/// default optimizer's other settings. A `loss:` mix is always replaced whole, since adding
/// the default's terms to a stage's own mix would silently change what it optimises.
pub const MERGED_MAPPINGS: &[&str] = &["optimizer", "model", "sampler", "probe"];
