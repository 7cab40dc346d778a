//! Evaluation of loss cases given in the golden-vector JSON format
//! (`engine/tests/data/golden/FORMAT.md`), so the library can be held against the reference
//! implementations (or any other tool) without writing Rust.

use super::{
    cc, cc_masked, cc_repdistiller, cc_torchdistill, ce, kd, rkd_angle, rkd_angle_masked,
    rkd_distance, rkd_distance_masked, sp, sp_masked, sp_torchdistill, triplet, CcKernel,
    CcTorchdistillKernel, Mask, MatRef,
};
use serde_json::{json, Map, Value};

/// The loss names [`eval_cases`] understands (the golden file's, plus `ce`, plus the names
/// recipes give RKD-D and RKD-A: see [`RECIPE_NAMES`]).
const LOSS_NAMES: [&str; 12] = [
    "rkd_distance",
    "rkd_angle",
    "sp",
    "sp_torchdistill",
    "cc",
    "cc_torchdistill",
    "cc_repdistiller",
    "kd",
    "triplet",
    "ce",
    "rkd_d",
    "rkd_a",
];

/// A recipe's name of a loss → the golden file's, where the two differ.
const RECIPE_NAMES: [(&str, &str); 2] = [("rkd_d", "rkd_distance"), ("rkd_a", "rkd_angle")];

/// The losses that take `params.keep` and `params.mask_seed` (relation masking).
const MASKABLE: [&str; 4] = ["rkd_distance", "rkd_angle", "sp", "cc"];

/// Defaults for parameters a case leaves out: the values the golden vectors and the
/// reference code use (KD T = 4, triplet margin 0.2, CC P = 2 and γ = 0.4 as in KD-Zoo's
/// runs and torchdistill's sample config).
const DEFAULT_TEMPERATURE: f64 = 4.0;
const DEFAULT_MARGIN: f64 = 0.2;
const DEFAULT_P: u32 = 2;
const DEFAULT_GAMMA: f64 = 0.4;

/// Why [`eval_cases`] rejected its input. Every case-level error names the case (its `name`,
/// or `#index` when the name itself is the problem) and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("input must be an object with a `cases` array")]
    NoCases,
    #[error("case {case}: missing field `{field}`")]
    Missing { case: String, field: String },
    #[error("case {case}: invalid field `{field}`: {reason}")]
    Invalid {
        case: String,
        field: String,
        reason: String,
    },
    #[error("case {case}: unknown loss `{loss}` (known: {})", LOSS_NAMES.join(", "))]
    UnknownLoss { case: String, loss: String },
}

/// A case being evaluated: its identity for error messages and its JSON object.
struct CaseIn<'a> {
    id: String,
    obj: &'a Map<String, Value>,
    params: Option<&'a Map<String, Value>>,
}

/// A row-major f64 matrix read from a list of rows.
struct Mat {
    data: Vec<f64>,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn view(&self) -> MatRef<'_, f64> {
        MatRef {
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

impl CaseIn<'_> {
    fn missing(&self, field: &str) -> EvalError {
        EvalError::Missing {
            case: self.id.clone(),
            field: field.to_owned(),
        }
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> EvalError {
        EvalError::Invalid {
            case: self.id.clone(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// A required field; JSON `null` counts as missing (the golden file writes a triplet
    /// case's teacher as null).
    fn field(&self, key: &str) -> Result<&Value, EvalError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Err(self.missing(key)),
            Some(v) => Ok(v),
        }
    }

    fn matrix(&self, key: &str) -> Result<Mat, EvalError> {
        let Value::Array(rows) = self.field(key)? else {
            return Err(self.invalid(key, "expected a list of rows"));
        };
        let mut data = Vec::new();
        let mut cols = None;
        for (r, row) in rows.iter().enumerate() {
            let Value::Array(row) = row else {
                return Err(self.invalid(key, format!("row {r} is not a list")));
            };
            match cols {
                None => cols = Some(row.len()),
                Some(c) if c != row.len() => {
                    return Err(self.invalid(
                        key,
                        format!("row {r} has {} entries but row 0 has {c}", row.len()),
                    ))
                }
                Some(_) => {}
            }
            for (k, v) in row.iter().enumerate() {
                let Some(x) = v.as_f64() else {
                    return Err(self.invalid(key, format!("entry [{r}][{k}] is not a number")));
                };
                data.push(x);
            }
        }
        Ok(Mat {
            data,
            rows: rows.len(),
            cols: cols.unwrap_or(0),
        })
    }

    fn param(&self, key: &str) -> Option<&Value> {
        self.params
            .and_then(|p| p.get(key))
            .filter(|v| !v.is_null())
    }

    fn param_f64(&self, key: &str, default: f64) -> Result<f64, EvalError> {
        match self.param(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.invalid(&format!("params.{key}"), "expected a number")),
        }
    }

    /// A non-negative integer; `2.0` is accepted as 2 because JSON writers differ in how
    /// they print integral floats.
    fn param_u32(&self, key: &str, default: u32) -> Result<u32, EvalError> {
        let Some(v) = self.param(key) else {
            return Ok(default);
        };
        let bad = || self.invalid(&format!("params.{key}"), "expected a non-negative integer");
        if let Some(u) = v.as_u64() {
            return u32::try_from(u).map_err(|_| bad());
        }
        match v.as_f64() {
            Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= f64::from(u32::MAX) => Ok(x as u32),
            _ => Err(bad()),
        }
    }

    fn param_str(&self, key: &str) -> Result<Option<&str>, EvalError> {
        match self.param(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(&format!("params.{key}"), "expected a string")),
        }
    }

    /// The relation mask of `params.keep` and `params.mask_seed`: both or neither. One
    /// without the other, or either on a loss without masking, is an error rather than
    /// being ignored, since an unmasked result would fail a comparison for the wrong reason.
    fn mask(&self, loss: &str) -> Result<Option<Mask>, EvalError> {
        let (keep, seed) = (self.param("keep"), self.param("mask_seed"));
        if keep.is_none() && seed.is_none() {
            return Ok(None);
        }
        let given = if keep.is_some() {
            "params.keep"
        } else {
            "params.mask_seed"
        };
        if !MASKABLE.contains(&loss) {
            return Err(self.invalid(
                given,
                format!("relation masking applies to {} only", MASKABLE.join(", ")),
            ));
        }
        let (Some(keep), Some(seed)) = (keep, seed) else {
            return Err(self.invalid(
                given,
                "relation masking needs both params.keep and params.mask_seed",
            ));
        };
        let keep = match keep.as_f64() {
            Some(k) if k > 0.0 && k <= 1.0 => k,
            _ => {
                return Err(self.invalid(
                    "params.keep",
                    format!("expected a number in (0, 1], got {keep}"),
                ))
            }
        };
        // Integral floats are accepted as for `P`, but only up to 2⁵³, where a JSON float
        // still names one integer exactly.
        let seed = match (seed.as_u64(), seed.as_f64()) {
            (Some(u), _) => u,
            (None, Some(x)) if x >= 0.0 && x.fract() == 0.0 && x <= (1u64 << 53) as f64 => x as u64,
            _ => {
                return Err(self.invalid(
                    "params.mask_seed",
                    format!("expected an integer in [0, 2^64), got {seed}"),
                ))
            }
        };
        Ok(Some(Mask { keep, seed }))
    }

    /// Rejects an `l2_normalize` flag that contradicts the loss: silently computing the
    /// other variant would make a comparison fail for the wrong reason.
    fn check_l2_normalize(&self, expected: bool) -> Result<(), EvalError> {
        match self.param("l2_normalize") {
            None => Ok(()),
            Some(Value::Bool(b)) if *b == expected => Ok(()),
            Some(v) => Err(self.invalid(
                "params.l2_normalize",
                format!(
                    "this loss always uses {expected}, got {v} (use {} for the other variant)",
                    if expected { "cc_torchdistill" } else { "cc" }
                ),
            )),
        }
    }

    /// The teacher, required to have the student's rows, and its columns too if `same_width`.
    fn teacher(&self, s: &Mat, same_width: bool) -> Result<Mat, EvalError> {
        let t = self.matrix("teacher")?;
        if t.rows != s.rows {
            return Err(self.invalid(
                "teacher",
                format!("{} rows but the student has {}", t.rows, s.rows),
            ));
        }
        if same_width && t.cols != s.cols && t.rows > 0 {
            return Err(self.invalid(
                "teacher",
                format!(
                    "{} columns but this loss needs the student's {}",
                    t.cols, s.cols
                ),
            ));
        }
        Ok(t)
    }

    /// A non-negative integer below `bound`: an index into `what` (rows or classes).
    fn index(&self, v: &Value, key: &str, bound: usize, what: &str) -> Result<usize, EvalError> {
        match v.as_u64().and_then(|u| usize::try_from(u).ok()) {
            Some(i) if i < bound => Ok(i),
            _ => Err(self.invalid(key, format!("{v} is not a {what} index below {bound}"))),
        }
    }

    fn triplets(&self, rows: usize) -> Result<Vec<[usize; 3]>, EvalError> {
        let Value::Array(list) = self.field("triplets")? else {
            return Err(self.invalid(
                "triplets",
                "expected a list of [anchor, positive, negative]",
            ));
        };
        list.iter()
            .map(|t| match t {
                Value::Array(a) if a.len() == 3 => {
                    let mut out = [0usize; 3];
                    for (o, v) in out.iter_mut().zip(a) {
                        *o = self.index(v, "triplets", rows, "row")?;
                    }
                    Ok(out)
                }
                _ => Err(self.invalid(
                    "triplets",
                    format!("{t} is not [anchor, positive, negative]"),
                )),
            })
            .collect()
    }

    fn labels(&self, rows: usize, classes: usize) -> Result<Vec<u32>, EvalError> {
        let Value::Array(list) = self.field("labels")? else {
            return Err(self.invalid("labels", "expected a list of class indices"));
        };
        if list.len() != rows {
            return Err(self.invalid("labels", format!("{} labels for {rows} rows", list.len())));
        }
        let bound = classes.min(u32::MAX as usize);
        list.iter()
            .map(|v| self.index(v, "labels", bound, "class").map(|i| i as u32))
            .collect()
    }
}

/// Evaluates one case: `(value, dL/dS, rows, cols)`.
fn eval_one(c: &CaseIn) -> Result<(f64, Vec<f64>, usize, usize), EvalError> {
    let loss = match c.field("loss")? {
        Value::String(s) => s.as_str(),
        _ => return Err(c.invalid("loss", "expected a string")),
    };
    if !LOSS_NAMES.contains(&loss) {
        return Err(EvalError::UnknownLoss {
            case: c.id.clone(),
            loss: loss.to_owned(),
        });
    }
    let loss = RECIPE_NAMES
        .iter()
        .find(|(recipe, _)| *recipe == loss)
        .map_or(loss, |(_, golden)| golden);
    let mask = c.mask(loss)?;
    let s = c.matrix("student")?;
    let sv = s.view();
    let (value, grad) = match loss {
        "rkd_distance" => {
            let t = c.teacher(&s, false)?;
            match mask {
                None => rkd_distance(sv, t.view()),
                Some(m) => rkd_distance_masked(sv, t.view(), m),
            }
        }
        "rkd_angle" => {
            let t = c.teacher(&s, false)?;
            match mask {
                None => rkd_angle(sv, t.view()),
                Some(m) => rkd_angle_masked(sv, t.view(), m),
            }
        }
        "sp" => {
            let t = c.teacher(&s, false)?;
            match mask {
                None => sp(sv, t.view()),
                Some(m) => sp_masked(sv, t.view(), m),
            }
        }
        "sp_torchdistill" => sp_torchdistill(sv, c.teacher(&s, false)?.view()),
        "cc" => {
            c.check_l2_normalize(true)?;
            let gamma = c.param_f64("gamma", DEFAULT_GAMMA)?;
            let kernel = match c.param_str("kernel")? {
                None | Some("taylor") => CcKernel::Taylor {
                    p: c.param_u32("P", DEFAULT_P)?,
                    gamma,
                },
                Some("gaussian") => CcKernel::Gaussian { gamma },
                Some("bilinear") => CcKernel::Bilinear,
                Some(other) => {
                    return Err(c.invalid(
                        "params.kernel",
                        format!("unknown cc kernel `{other}` (taylor, gaussian, bilinear)"),
                    ))
                }
            };
            let t = c.teacher(&s, false)?;
            match mask {
                None => cc(sv, t.view(), kernel),
                Some(m) => cc_masked(sv, t.view(), kernel, m),
            }
        }
        "cc_torchdistill" => {
            c.check_l2_normalize(false)?;
            let kernel = match c.param_str("kernel")? {
                None | Some("gaussian") => CcTorchdistillKernel::Gaussian {
                    p: c.param_u32("P", DEFAULT_P)?,
                    gamma: c.param_f64("gamma", DEFAULT_GAMMA)?,
                },
                Some("bilinear") => CcTorchdistillKernel::Bilinear,
                Some(other) => {
                    return Err(c.invalid(
                        "params.kernel",
                        format!("unknown cc_torchdistill kernel `{other}` (gaussian, bilinear)"),
                    ))
                }
            };
            cc_torchdistill(sv, c.teacher(&s, false)?.view(), kernel)
        }
        "cc_repdistiller" => cc_repdistiller(sv, c.teacher(&s, true)?.view()),
        "kd" => {
            let temperature = c.param_f64("temperature", DEFAULT_TEMPERATURE)?;
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(c.invalid(
                    "params.temperature",
                    format!("must be positive, got {temperature}"),
                ));
            }
            kd(sv, c.teacher(&s, true)?.view(), temperature)
        }
        "triplet" => {
            let margin = c.param_f64("margin", DEFAULT_MARGIN)?;
            triplet(sv, &c.triplets(s.rows)?, margin)
        }
        "ce" => ce(sv, &c.labels(s.rows, s.cols)?),
        _ => unreachable!("checked against LOSS_NAMES above"),
    };
    Ok((value, grad, s.rows, s.cols))
}

/// Evaluates every case of `input`, in the golden-vector format of `engine/tests/data/golden/FORMAT.md`
/// (`{"cases": [{"name", "loss", "params", "student", "teacher", "labels", "triplets"}, …]}`;
/// each case needs only the fields its loss reads, other fields are ignored), in float64.
/// Returns `{"cases": [{"name", "value", "grad_student"}, …]}` in input order, with
/// `grad_student` as a list of rows. A non-finite value is written as `null` (JSON has no
/// NaN).
///
/// `loss` is one of `rkd_distance` (or `rkd_d`, its name in recipes), `rkd_angle` (or
/// `rkd_a`), `sp`, `sp_torchdistill`, `cc`, `cc_torchdistill`, `cc_repdistiller`, `kd`,
/// `triplet` or `ce`. Parameters use the golden
/// file's keys, with defaults where a key is absent:
/// * `cc`: `P` (2), `gamma` (0.4), and the optional `kernel`: `taylor` (default, the
///   golden cases), `gaussian` (the exact RBF, not a Taylor series) or `bilinear`;
/// * `cc_torchdistill`: `kernel`, `gaussian` (default; torchdistill's name for its Taylor
///   series) or `bilinear`, with `P` (2) and `gamma` (0.4);
/// * `kd`: `temperature` (4); `triplet`: `margin` (0.2); the others take none.
/// * relation masking, on `rkd_distance`, `rkd_angle`, `sp` and `cc` only: `keep` (a number
///   in (0, 1]) together with `mask_seed` (an integer in [0, 2⁶⁴)) evaluates the masked
///   loss with `Mask { keep, seed: mask_seed }` (see [`Mask`]); without both the loss is
///   unmasked. One of the two alone, or either on another loss, is an error.
///
/// `teacher` is required by all losses but `triplet` and `ce`; `triplet` needs `triplets`,
/// `ce` needs `labels`.
///
/// # Errors
/// The first case with a missing or malformed field, an unknown loss or parameter value, or
/// inconsistent shapes; the error names the case and the field.
pub fn eval_cases(input: &Value) -> Result<Value, EvalError> {
    let Some(Value::Array(cases)) = input.get("cases") else {
        return Err(EvalError::NoCases);
    };
    let mut out = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let by_index = format!("#{i}");
        let Value::Object(obj) = case else {
            return Err(EvalError::Invalid {
                case: by_index,
                field: "(case)".to_owned(),
                reason: "expected an object".to_owned(),
            });
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(EvalError::Missing {
                    case: by_index,
                    field: "name".to_owned(),
                })
            }
            Some(_) => {
                return Err(EvalError::Invalid {
                    case: by_index,
                    field: "name".to_owned(),
                    reason: "expected a string".to_owned(),
                })
            }
        };
        let params = match obj.get("params") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => {
                return Err(EvalError::Invalid {
                    case: name,
                    field: "params".to_owned(),
                    reason: "expected an object".to_owned(),
                })
            }
        };
        let c = CaseIn {
            id: name,
            obj,
            params,
        };
        let (value, grad, rows, cols) = eval_one(&c)?;
        let rows: Vec<Value> = (0..rows)
            .map(|r| json!(&grad[r * cols..(r + 1) * cols]))
            .collect();
        out.push(json!({
            "name": c.id,
            "value": value,
            "grad_student": rows,
        }));
    }
    Ok(json!({ "cases": out }))
}
