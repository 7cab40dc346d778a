//! Losses on class logits: Hinton KD (RepDistiller `DistillKL`) and cross-entropy
//! (torch `F.cross_entropy`), both through a log-sum-exp log-softmax.
//!
//! Both compute in f64 whatever `T` is and round the results to `T` once. The KL value is
//! a sum of `p^t (log p^t − log p^s)` whose log-probabilities are O(log C) numbers: in f32
//! their absolute rounding (~1e-7) swamps the KL of close distributions (the golden
//! `pub_n8_tiny` KD value, 1e-6, came out 80% off), and `p^s − p^t` of two saturated rows
//! loses its small difference the same way. The work is O(N·C) exps, negligible next to
//! the network that produced the logits.

use super::{cst, MatRef};
use num_traits::Float;

/// `out = log_softmax(z / temperature)` for one row, in f64, formed as torch does:
/// `y − max y − ln Σ exp(y − max y)` with `y = z / temperature`. Subtracting the maximum
/// keeps every `exp` ≤ 1, so large logits cannot overflow, and the log never sees an
/// underflowed 0: very unlikely classes get a large negative log-probability, not −inf.
fn log_softmax_row<T: Float>(z: &[T], temperature: f64, out: &mut [f64]) {
    for (o, &v) in out.iter_mut().zip(z) {
        // Division, not multiplication by 1/T, to round like torch's `y / T`.
        *o = v.to_f64().unwrap_or(f64::NAN) / temperature;
    }
    let max = out.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = out.iter().map(|&v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    for o in out.iter_mut() {
        // (y − max) − ln Σ, not y − (max + ln Σ): for a dominant class ln Σ is tiny and
        // adding it to a large max first would round it away (at logits ~1e3 that moved a
        // golden KD gradient entry by 1e-4 relative).
        *o = (*o - max) - log_sum;
    }
}

/// Hinton KD as in RepDistiller `distiller_zoo/KD.py::DistillKL` (golden T = 4):
/// `p^t = softmax(z_t/T)`, `L = T²/B · Σ_ic p^t_ic (log p^t_ic − log_softmax(z_s/T)_ic)`.
/// Returns `(L, dL/dz_s)`; `s` and `t` are N×C logits of the same shape.
///
/// A class whose teacher probability underflows to exactly 0 contributes 0 (torch's
/// `kl_div` uses xlogy, 0·log 0 = 0); both log-probabilities come from a log-sum-exp, so
/// nothing overflows or becomes NaN at large logits. The gradient is what torch's autograd
/// gives, `(T/B)(p^s · Σ_c p^t_c − p^t)`; that is `(T/B)(p^s − p^t)` up to the rounding of
/// `Σ_c p^t_c`, and it is the exact derivative of the formula for the computed `p^t`.
/// torchdistill's `KDLoss` without targets returns this divided by T². An empty batch
/// gives 0 (torch: NaN).
///
/// # Panics
/// If a buffer does not match its shape, the shapes differ or `temperature` is not a
/// positive finite number.
pub fn kd<T: Float>(s: MatRef<T>, t: MatRef<T>, temperature: T) -> (T, Vec<T>) {
    s.assert_valid("kd");
    t.assert_valid("kd");
    assert!(
        s.rows == t.rows && s.cols == t.cols,
        "kd: student logits are {}x{} but teacher logits are {}x{}",
        s.rows,
        s.cols,
        t.rows,
        t.cols
    );
    assert!(
        temperature > T::zero() && temperature.is_finite(),
        "kd: temperature must be positive and finite"
    );
    let (b, c) = (s.rows, s.cols);
    let mut grad = vec![T::zero(); b * c];
    if b == 0 || c == 0 {
        return (T::zero(), grad);
    }
    let temp = temperature.to_f64().unwrap_or(f64::NAN);
    let coef = temp / b as f64;
    let mut ls = vec![0.0f64; c];
    let mut lt = vec![0.0f64; c];
    let mut loss = 0.0f64;
    for (i, g) in grad.chunks_exact_mut(c).enumerate() {
        log_softmax_row(s.row(i), temp, &mut ls);
        log_softmax_row(t.row(i), temp, &mut lt);
        let mut sum_pt = 0.0f64;
        for (&a, &bt) in ls.iter().zip(&lt) {
            let pt = bt.exp();
            sum_pt += pt;
            if pt > 0.0 {
                loss += pt * (bt - a);
            }
        }
        for ((o, &a), &bt) in g.iter_mut().zip(&ls).zip(&lt) {
            *o = cst(coef * (a.exp() * sum_pt - bt.exp()));
        }
    }
    (cst(loss * temp * temp / b as f64), grad)
}

/// Cross-entropy of N×C logits with integer labels, mean over the N rows (torch
/// `F.cross_entropy`, no weights, no label smoothing): `L = −(1/N) Σ_i log_softmax(z_i)_{y_i}`.
/// Returns `(L, dL/dz) = (value, (softmax(z) − onehot(y)) / N)`. An empty batch gives 0
/// (torch: NaN).
///
/// # Panics
/// If the buffer does not match its shape, `labels.len() != logits.rows` or a label is not
/// below the number of classes.
pub fn ce<T: Float>(logits: MatRef<T>, labels: &[u32]) -> (T, Vec<T>) {
    logits.assert_valid("ce");
    let (n, c) = (logits.rows, logits.cols);
    assert!(
        labels.len() == n,
        "ce: {} labels for {n} rows",
        labels.len()
    );
    if let Some(bad) = labels.iter().find(|&&y| y as usize >= c) {
        panic!("ce: label {bad} out of range for {c} classes");
    }
    let mut grad = vec![T::zero(); n * c];
    if n == 0 {
        return (T::zero(), grad);
    }
    let inv_n = 1.0 / n as f64;
    let mut ls = vec![0.0f64; c];
    let mut loss = 0.0f64;
    for ((i, g), &y) in grad.chunks_exact_mut(c).enumerate().zip(labels) {
        log_softmax_row(logits.row(i), 1.0, &mut ls);
        let y = y as usize;
        loss -= ls[y];
        for (k, (o, &l)) in g.iter_mut().zip(&ls).enumerate() {
            let onehot = if k == y { 1.0 } else { 0.0 };
            *o = cst((l.exp() - onehot) * inv_n);
        }
    }
    (cst(loss * inv_n), grad)
}
