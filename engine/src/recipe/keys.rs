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

/// The longest recipe, stage or data set name, in characters.
pub const NAME_MAX_CHARS: usize = 100;

/// Whether `name` may name a recipe (`dots`: a recipe name may hold `.`, as in `rkd-v1.2`) or
/// a stage or data set (no `.`: those are parts of dotted paths, `--set stages.NAME.epochs=1`);
/// the error says why not and what a name may be.
///
/// A recipe's name becomes a file name (`runs/recipes/NAME.json`), every name a value in the
/// results database, a column of tables and a shell word, so a name is kept to what is safe
/// in all of them: ASCII letters, digits, `_` and `-`, starting with a letter or digit, at
/// most [`NAME_MAX_CHARS`]. Nothing like `/`, `..`, `\`, NUL or a control character gets in.
pub fn check_name(name: &str, dots: bool) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dots && c == '.');
    let extra = if dots { ", `-` or `.`" } else { " or `-`" };
    let rule = format!("a name is 1 to {NAME_MAX_CHARS} ASCII letters, digits, `_`{extra}, starting with a letter or digit");
    let why = if name.is_empty() {
        return Err(format!("a name cannot be empty; {rule}"));
    } else if name.chars().count() > NAME_MAX_CHARS {
        format!("it is {} characters long", name.chars().count())
    } else if let Some(c) = name.chars().find(|&c| !allowed(c)) {
        format!("it contains {}", describe(c))
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        // Only `_`, `-` or `.` can be here: hidden files, options, `..`.
        format!("it starts with `{}`", name.chars().next().unwrap_or(' '))
    } else {
        return Ok(());
    };
    let shown: String = name
        .chars()
        .take(40)
        .collect::<String>()
        .escape_debug()
        .to_string();
    let more = if name.chars().count() > 40 { "…" } else { "" };
    Err(format!(
        "`{shown}{more}` is not a valid name: {why}; {rule}"
    ))
}

fn describe(c: char) -> String {
    match c {
        '.' => "`.`, and stage and data set names are parts of dotted paths (`stages.NAME.epochs`)"
            .into(),
        c if c.is_control() => format!("the control character {}", c.escape_unicode()),
        // A letter is shown; anything else only escaped (U+202E would reverse the terminal line).
        c if !c.is_ascii() && c.is_alphanumeric() => {
            format!("the non-ASCII character `{c}` ({})", c.escape_unicode())
        }
        c if !c.is_ascii() => format!("the non-ASCII character {}", c.escape_unicode()),
        c => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_file_stems_and_path_parts() {
        for ok in [
            "quickstart",
            "rkd_metric",
            "a",
            "0",
            "x-y_z",
            &"a".repeat(NAME_MAX_CHARS),
        ] {
            assert_eq!(check_name(ok, false), Ok(()), "{ok}");
        }
        assert_eq!(check_name("rkd-v1.2", true), Ok(()));
        let refused = [
            ("", "cannot be empty"),
            ("/tmp/victim", "`/`"),
            ("../x", "`.`"),
            ("a\\b", "`\\`"),
            ("a\0b", "control character"),
            ("café", "non-ASCII"),
            ("-x", "starts with `-`"),
            ("a b", "` `"),
        ];
        for (name, why) in refused {
            let e = check_name(name, false).unwrap_err();
            assert!(e.contains(why), "{name:?}: {e}");
        }
        assert!(check_name("..", true)
            .unwrap_err()
            .contains("starts with `.`"));
        assert!(check_name(&"a".repeat(NAME_MAX_CHARS + 1), true)
            .unwrap_err()
            .contains("101 characters"));
    }
}
