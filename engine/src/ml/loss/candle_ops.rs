//! candle adapters: the pure losses as `CustomOp1`s on the student tensor.
//!
//! The teacher (and the triplet list or labels) live inside the op as plain host data, which
//! makes them constants of the graph: `backward()` can only reach the student.

use super::{
    cc, cc_masked, ce, kd, rkd_angle, rkd_angle_masked, rkd_distance, rkd_distance_masked, sp,
    sp_masked, triplet, CcKernel, Mask, MatRef,
};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;
use std::sync::Mutex;

/// Host copy of a tensor in one of the two supported float types.
#[derive(Clone)]
enum Host {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The float types the adapters accept, with the conversions the op needs.
trait HostFloat: Float + Send + Sync + WithDType {
    fn wrap(v: Vec<Self>) -> Host;
    fn view(h: &Host) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
}

impl HostFloat for f32 {
    fn wrap(v: Vec<Self>) -> Host {
        Host::F32(v)
    }
    fn view(h: &Host) -> Option<&[Self]> {
        match h {
            Host::F32(v) => Some(v),
            Host::F64(_) => None,
        }
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl HostFloat for f64 {
    fn wrap(v: Vec<Self>) -> Host {
        Host::F64(v)
    }
    fn view(h: &Host) -> Option<&[Self]> {
        match h {
            Host::F64(v) => Some(v),
            Host::F32(_) => None,
        }
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

enum Kind {
    Distance {
        teacher: Host,
        cols: usize,
        mask: Option<Mask>,
    },
    Angle {
        teacher: Host,
        cols: usize,
        mask: Option<Mask>,
    },
    Triplet {
        triplets: Vec<[usize; 3]>,
        margin: f64,
    },
    Sp {
        teacher: Host,
        cols: usize,
        mask: Option<Mask>,
    },
    Cc {
        teacher: Host,
        cols: usize,
        kernel: CcKernel,
        mask: Option<Mask>,
    },
    Kd {
        teacher: Host,
        cols: usize,
        temperature: f64,
    },
    Ce {
        labels: Vec<u32>,
    },
}

struct LossOp {
    name: &'static str,
    kind: Kind,
    /// dLoss/dStudent from the forward pass. The pure functions produce value and gradient
    /// together, so keeping the gradient avoids running RKD-A a second time in `bwd`; it
    /// also ties the gradient to the values the forward saw.
    grad: Mutex<Option<Host>>,
}

impl LossOp {
    fn eval<T: HostFloat>(&self, s: MatRef<T>) -> Result<(T, Vec<T>)> {
        let teacher = |h, cols| teacher_mat::<T>(self.name, h, s.rows, cols);
        Ok(match &self.kind {
            Kind::Distance {
                teacher: h,
                cols,
                mask,
            } => match mask {
                None => rkd_distance(s, teacher(h, *cols)?),
                Some(m) => rkd_distance_masked(s, teacher(h, *cols)?, *m),
            },
            Kind::Angle {
                teacher: h,
                cols,
                mask,
            } => match mask {
                None => rkd_angle(s, teacher(h, *cols)?),
                Some(m) => rkd_angle_masked(s, teacher(h, *cols)?, *m),
            },
            Kind::Triplet { triplets, margin } => {
                triplet(s, triplets, cst_param::<T>(self.name, "margin", *margin)?)
            }
            Kind::Sp {
                teacher: h,
                cols,
                mask,
            } => match mask {
                None => sp(s, teacher(h, *cols)?),
                Some(m) => sp_masked(s, teacher(h, *cols)?, *m),
            },
            Kind::Cc {
                teacher: h,
                cols,
                kernel,
                mask,
            } => match mask {
                None => cc(s, teacher(h, *cols)?, *kernel),
                Some(m) => cc_masked(s, teacher(h, *cols)?, *kernel, *m),
            },
            Kind::Kd {
                teacher: h,
                cols,
                temperature,
            } => {
                let temp = cst_param::<T>(self.name, "temperature", *temperature)?;
                // kd_loss checked the f64 value; an f32 student can still round it to 0 or
                // inf, which the pure function would reject with a panic.
                if !(temp > T::zero() && temp.is_finite()) {
                    bail!("kd: temperature {temperature} is 0 or inf in the student's dtype");
                }
                kd(s, teacher(h, *cols)?, temp)
            }
            Kind::Ce { labels } => ce(s, labels),
        })
    }

    fn fwd_typed<T: HostFloat>(&self, data: &[T], layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("{}: student must be contiguous", self.name)
        };
        let s = MatRef::new(&data[start..end], rows, cols)
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        let (value, grad) = self.eval(s)?;
        *self.grad.lock().unwrap_or_else(|e| e.into_inner()) = Some(T::wrap(grad));
        Ok((T::storage(vec![value]), Shape::from(())))
    }

    /// Fallback for a `bwd` without a cached forward gradient: recompute from `arg`.
    fn recompute<T: HostFloat>(&self, arg: &Tensor) -> Result<Host> {
        let (rows, cols) = arg.dims2()?;
        let data = arg.flatten_all()?.to_vec1::<T>()?;
        let s =
            MatRef::new(&data, rows, cols).map_err(|e| candle_core::Error::msg(e.to_string()))?;
        Ok(T::wrap(self.eval(s)?.1))
    }
}

fn teacher_mat<'a, T: HostFloat>(
    name: &str,
    h: &'a Host,
    rows: usize,
    cols: usize,
) -> Result<MatRef<'a, T>> {
    let Some(data) = T::view(h) else {
        bail!("{name}: teacher dtype differs from the student's")
    };
    MatRef::new(data, rows, cols).map_err(|e| candle_core::Error::msg(e.to_string()))
}

fn cst_param<T: Float>(name: &str, what: &str, v: f64) -> Result<T> {
    match T::from(v) {
        Some(x) => Ok(x),
        None => bail!("{name}: {what} {v} not representable"),
    }
}

impl CustomOp1 for LossOp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(v) => self.fwd_typed(v, layout),
            CpuStorage::F64(v) => self.fwd_typed(v, layout),
            other => bail!(
                "{}: student dtype {:?} unsupported (F32 or F64)",
                self.name,
                other.dtype()
            ),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let cached = self.grad.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let host = match cached {
            Some(h) => h,
            None => match arg.dtype() {
                DType::F32 => self.recompute::<f32>(arg)?,
                DType::F64 => self.recompute::<f64>(arg)?,
                dt => bail!(
                    "{}: student dtype {dt:?} unsupported (F32 or F64)",
                    self.name
                ),
            },
        };
        let grad = match host {
            Host::F32(v) => Tensor::from_vec(v, arg.shape(), arg.device())?,
            Host::F64(v) => Tensor::from_vec(v, arg.shape(), arg.device())?,
        };
        Ok(Some(grad.broadcast_mul(grad_res)?))
    }
}

/// Shape, device and dtype checks shared by all adapters; returns (rows, cols).
fn check_student(name: &str, student: &Tensor) -> Result<(usize, usize)> {
    let Ok((rows, cols)) = student.dims2() else {
        bail!(
            "{name}: student must be 2-D (N x D), got shape {:?}",
            student.dims()
        )
    };
    if !student.device().is_cpu() {
        bail!("{name}: only CPU tensors are supported");
    }
    if !matches!(student.dtype(), DType::F32 | DType::F64) {
        bail!(
            "{name}: student dtype {:?} unsupported (F32 or F64)",
            student.dtype()
        );
    }
    Ok((rows, cols))
}

/// Rejects a mask whose `keep` is outside (0, 1] up front, so it surfaces as an error,
/// not as a panic inside the op.
fn check_mask(name: &str, mask: Option<Mask>) -> Result<()> {
    if let Some(reason) = mask.and_then(|m| m.invalid_reason()) {
        bail!("{name}: {reason}");
    }
    Ok(())
}

fn relational(
    name: &'static str,
    student: &Tensor,
    teacher: &Tensor,
    make: impl FnOnce(Host, usize) -> Kind,
) -> Result<Tensor> {
    let (rows, _) = check_student(name, student)?;
    let Ok((t_rows, t_cols)) = teacher.dims2() else {
        bail!(
            "{name}: teacher must be 2-D (N x D), got shape {:?}",
            teacher.dims()
        )
    };
    if t_rows != rows {
        bail!("{name}: student has {rows} rows but teacher has {t_rows}");
    }
    if !teacher.device().is_cpu() {
        bail!("{name}: only CPU tensors are supported");
    }
    // Cast the teacher to the student's dtype so mixed-precision callers need no extra step;
    // the host copy is detached from any graph, which is what makes the teacher a constant.
    let t = teacher.to_dtype(student.dtype())?.flatten_all()?;
    let host = match student.dtype() {
        DType::F32 => Host::F32(t.to_vec1::<f32>()?),
        _ => Host::F64(t.to_vec1::<f64>()?),
    };
    let op = LossOp {
        name,
        kind: make(host, t_cols),
        grad: Mutex::new(None),
    };
    student.contiguous()?.apply_op1(op)
}

/// RKD-D ([`rkd_distance`]) of `student` (N×Ds) against the constant `teacher` (N×Dt) as a
/// scalar tensor whose backward reaches `student`. CPU, F32 or F64 (the teacher is cast to
/// the student's dtype). `mask: Some(m)` compares only the pairs `m` keeps
/// ([`rkd_distance_masked`]); `None` is the unmasked loss. A `keep` outside (0, 1] is an
/// error.
pub fn rkd_distance_loss(student: &Tensor, teacher: &Tensor, mask: Option<Mask>) -> Result<Tensor> {
    check_mask("rkd_distance", mask)?;
    relational("rkd_distance", student, teacher, |teacher, cols| {
        Kind::Distance {
            teacher,
            cols,
            mask,
        }
    })
}

/// RKD-A ([`rkd_angle`]) of `student` (N×Ds) against the constant `teacher` (N×Dt) as a
/// scalar tensor whose backward reaches `student`. CPU, F32 or F64 (the teacher is cast to
/// the student's dtype). `mask: Some(m)` evaluates only the angles `m` keeps
/// ([`rkd_angle_masked`], cost ∝ keep); `None` is the unmasked loss. A `keep` outside
/// (0, 1] is an error.
pub fn rkd_angle_loss(student: &Tensor, teacher: &Tensor, mask: Option<Mask>) -> Result<Tensor> {
    check_mask("rkd_angle", mask)?;
    relational("rkd_angle", student, teacher, |teacher, cols| Kind::Angle {
        teacher,
        cols,
        mask,
    })
}

/// Triplet margin loss ([`triplet`]) over rows of `student` (N×D) as a scalar tensor whose
/// backward reaches `student`. Rejects out-of-range indices up front so a bad mining result
/// surfaces as an error, not a panic inside the op.
pub fn triplet_loss(student: &Tensor, triplets: &[[usize; 3]], margin: f64) -> Result<Tensor> {
    let (rows, _) = check_student("triplet", student)?;
    if let Some(bad) = triplets.iter().find(|t| t.iter().any(|&i| i >= rows)) {
        bail!("triplet: {bad:?} out of range for {rows} rows");
    }
    let op = LossOp {
        name: "triplet",
        kind: Kind::Triplet {
            triplets: triplets.to_vec(),
            margin,
        },
        grad: Mutex::new(None),
    };
    student.contiguous()?.apply_op1(op)
}

/// SP ([`sp`], RepDistiller's `Similarity`) of `student` (N×Ds) against the constant
/// `teacher` (N×Dt) as a scalar tensor whose backward reaches `student`. CPU, F32 or F64
/// (the teacher is cast to the student's dtype). `mask: Some(m)` compares only the entries
/// `m` keeps ([`sp_masked`]); `None` is the unmasked loss. A `keep` outside (0, 1] is an
/// error.
pub fn sp_loss(student: &Tensor, teacher: &Tensor, mask: Option<Mask>) -> Result<Tensor> {
    check_mask("sp", mask)?;
    relational("sp", student, teacher, |teacher, cols| Kind::Sp {
        teacher,
        cols,
        mask,
    })
}

/// Correlation congruence ([`cc`]) with `kernel` of `student` (N×Ds) against the constant
/// `teacher` (N×Dt) as a scalar tensor whose backward reaches `student`. CPU, F32 or F64
/// (the teacher is cast to the student's dtype). `mask: Some(m)` compares only the entries
/// `m` keeps ([`cc_masked`]); `None` is the unmasked loss. A `keep` outside (0, 1] is an
/// error.
pub fn cc_loss(
    student: &Tensor,
    teacher: &Tensor,
    kernel: CcKernel,
    mask: Option<Mask>,
) -> Result<Tensor> {
    check_mask("cc", mask)?;
    relational("cc", student, teacher, |teacher, cols| Kind::Cc {
        teacher,
        cols,
        kernel,
        mask,
    })
}

/// Hinton KD ([`kd`]) of `student_logits` (N×C) against the constant `teacher_logits` (N×C)
/// at `temperature` as a scalar tensor whose backward reaches the student. CPU, F32 or F64
/// (the teacher is cast to the student's dtype). The shape and temperature checks happen
/// here, so bad inputs surface as errors rather than panics inside the op.
pub fn kd_loss(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("kd: temperature must be positive and finite, got {temperature}");
    }
    let (_, cols) = check_student("kd", student_logits)?;
    if let Ok((_, t_cols)) = teacher_logits.dims2() {
        if t_cols != cols {
            bail!("kd: student has {cols} classes but teacher has {t_cols}");
        }
    }
    relational("kd", student_logits, teacher_logits, |teacher, cols| {
        Kind::Kd {
            teacher,
            cols,
            temperature,
        }
    })
}

/// Cross-entropy ([`ce`]) of `logits` (N×C) against integer `labels` (length N, each below
/// C) as a scalar tensor whose backward reaches `logits`. CPU, F32 or F64. Labels are
/// checked here, so a bad label is an error, not a panic inside the op.
pub fn ce_loss(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (rows, cols) = check_student("ce", logits)?;
    if labels.len() != rows {
        bail!("ce: {} labels for {rows} rows", labels.len());
    }
    if let Some(bad) = labels.iter().find(|&&y| y as usize >= cols) {
        bail!("ce: label {bad} out of range for {cols} classes");
    }
    let op = LossOp {
        name: "ce",
        kind: Kind::Ce {
            labels: labels.to_vec(),
        },
        grad: Mutex::new(None),
    };
    logits.contiguous()?.apply_op1(op)
}
