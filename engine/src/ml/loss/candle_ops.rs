//! candle adapters: the pure losses as `CustomOp1`s on the student tensor.
//!
//! The teacher (and the triplet list) live inside the op as plain host data, which makes
//! them constants of the graph: `backward()` can only reach the student.

use super::{rkd_angle, rkd_distance, triplet, MatRef};
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
    },
    Angle {
        teacher: Host,
        cols: usize,
    },
    Triplet {
        triplets: Vec<[usize; 3]>,
        margin: f64,
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
            Kind::Distance { teacher: h, cols } => rkd_distance(s, teacher(h, *cols)?),
            Kind::Angle { teacher: h, cols } => rkd_angle(s, teacher(h, *cols)?),
            Kind::Triplet { triplets, margin } => triplet(s, triplets, cst_margin::<T>(*margin)?),
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

fn cst_margin<T: Float>(m: f64) -> Result<T> {
    match T::from(m) {
        Some(v) => Ok(v),
        None => bail!("triplet: margin {m} not representable"),
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

fn relational(
    name: &'static str,
    student: &Tensor,
    teacher: &Tensor,
    make: fn(Host, usize) -> Kind,
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
/// the student's dtype).
pub fn rkd_distance_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    relational("rkd_distance", student, teacher, |teacher, cols| {
        Kind::Distance { teacher, cols }
    })
}

/// RKD-A ([`rkd_angle`]) of `student` (N×Ds) against the constant `teacher` (N×Dt) as a
/// scalar tensor whose backward reaches `student`. CPU, F32 or F64 (the teacher is cast to
/// the student's dtype).
pub fn rkd_angle_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    relational("rkd_angle", student, teacher, |teacher, cols| Kind::Angle {
        teacher,
        cols,
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
