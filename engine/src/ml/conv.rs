//! Convolutional bodies: a plain convnet and a CIFAR-style ResNet, both with BatchNorm.
//!
//! A body maps a (B, C, H, W) batch to the pooled feature its embedding head reads and to
//! the pooled per-block (convnet) or per-stage (ResNet) features behind the `hiddenN` taps.
//! Parameter names follow PyTorch (`conv1.weight`, `bn1.running_mean`,
//! `layer2.0.downsample.0.weight`, …) so that a checkpoint maps onto a torchvision-style
//! module by name.

use candle_core::{bail, Result, Tensor, Var};

use super::conv_ops::{self, max_pool2};
use super::layers::{ModelMode, ParamInit};

/// PyTorch's `BatchNorm2d` defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// A convolution without bias (every one here feeds a BatchNorm).
pub(crate) struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// A k×k convolution without bias: every convolution here feeds a BatchNorm, whose mean
    /// subtraction cancels a bias (torchvision's ResNets omit it for the same reason).
    /// Weight `name.weight`, ±1/√fan_in as PyTorch's `Conv2d` default.
    pub(crate) fn init(
        init: &mut ParamInit<'_>,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let weight = init.uniform(format!("{name}.weight"), &[c_out, c_in, k, k], bound)?;
        Ok(Self::new(weight, stride, padding))
    }

    fn new(weight: Tensor, stride: usize, padding: usize) -> Self {
        Self {
            weight,
            stride,
            padding,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv_ops::conv2d(x, &self.weight, self.stride, self.padding)
    }
}

/// BatchNorm2d as PyTorch's: training normalises with the batch mean and biased variance
/// and updates the running statistics with momentum 0.1 (the variance unbiased, ×n/(n−1));
/// evaluation normalises with the running statistics.
///
/// The running statistics are the `VarMap`'s own variables (`Var::from_tensor` on a
/// variable shares its storage) and are updated in place with `Var::set`, so `VarMap::save`
/// writes them and `VarMap::load` restores them. The arithmetic is the fused kernel in
/// [`conv_ops`]; `candle_nn::BatchNorm` computes the same (checked in a test) but slowly.
pub(crate) struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm {
    /// BatchNorm2d with PyTorch's init and parameter names: weight 1, bias 0, running mean
    /// 0, running var 1.
    pub(crate) fn init(init: &mut ParamInit<'_>, name: &str, c: usize) -> Result<Self> {
        let weight = init.constant(format!("{name}.weight"), c, 1.0)?;
        let bias = init.constant(format!("{name}.bias"), c, 0.0)?;
        let mean = init.constant(format!("{name}.running_mean"), c, 0.0)?;
        let var = init.constant(format!("{name}.running_var"), c, 1.0)?;
        Self::new(c, weight, bias, mean, var)
    }

    fn new(
        c: usize,
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
    ) -> Result<Self> {
        // A plain tensor would be copied into a fresh Var, and the running statistics would
        // then silently never reach the checkpoint.
        assert!(
            running_mean.is_variable() && running_var.is_variable(),
            "BatchNorm running statistics must be VarMap variables"
        );
        for (t, what) in [
            (&weight, "weight"),
            (&bias, "bias"),
            (&running_mean, "running mean"),
            (&running_var, "running var"),
        ] {
            if t.dims() != [c] {
                bail!("batch-norm {what} has shape {:?}, expected [{c}]", t.dims());
            }
        }
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: ModelMode) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.weight.dim(0)? {
            bail!("batch-norm over {} channels got {c}", self.weight.dim(0)?);
        }
        let invstd = |var: &[f64]| var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
        let host = |v: &Var| -> Result<Vec<f64>> {
            v.as_tensor().to_dtype(candle_core::DType::F64)?.to_vec1()
        };
        match mode {
            ModelMode::Train => {
                let n = b * h * w;
                // The unbiased variance divides by n − 1 (PyTorch raises the same error).
                if n < 2 {
                    bail!(
                        "BatchNorm in training needs more than one value per channel, got a \
                         batch of {b} with {h}×{w} maps; use a batch size of at least 2"
                    );
                }
                let (mean, var) = conv_ops::channel_stats(x)?;
                let unbias = n as f64 / (n - 1) as f64;
                let update = |running: &Var, batch: &[f64], scale: f64| -> Result<()> {
                    let new: Vec<f64> = host(running)?
                        .iter()
                        .zip(batch)
                        .map(|(r, v)| (1.0 - BN_MOMENTUM) * r + BN_MOMENTUM * v * scale)
                        .collect();
                    let dtype = running.dtype();
                    running.set(&Tensor::from_vec(new, c, x.device())?.to_dtype(dtype)?)
                };
                update(&self.running_mean, &mean, 1.0)?;
                update(&self.running_var, &var, unbias)?;
                let invstd = invstd(&var);
                conv_ops::batch_norm(x, &self.weight, &self.bias, mean, invstd, true)
            }
            ModelMode::Eval => {
                let mean = host(&self.running_mean)?;
                let invstd = invstd(&host(&self.running_var)?);
                conv_ops::batch_norm(x, &self.weight, &self.bias, mean, invstd, false)
            }
        }
    }
}

/// Convolution followed by BatchNorm.
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        init: &mut ParamInit<'_>,
        conv_name: &str,
        bn_name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv::init(init, conv_name, c_in, c_out, k, stride, padding)?,
            bn: BatchNorm::init(init, bn_name, c_out)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: ModelMode) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?, mode)
    }
}

/// (B, C, H, W) → (B, C): the mean over each feature map.
fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(2)
}

/// Per entry of `channels`: 3×3 conv (padding 1) → BN → ReLU → 2×2 max-pool.
/// Parameters `conv{i}.weight` and `bn{i}.*`, i from 1 (as the `hidden{i}` taps).
pub(crate) struct Convnet {
    blocks: Vec<ConvBn>,
    out: usize,
}

impl Convnet {
    pub(crate) fn new(init: &mut ParamInit<'_>, c_in: usize, channels: &[usize]) -> Result<Self> {
        let mut blocks = Vec::with_capacity(channels.len());
        let mut prev = c_in;
        for (i, &c) in channels.iter().enumerate() {
            let n = i + 1;
            blocks.push(ConvBn::new(
                init,
                &format!("conv{n}"),
                &format!("bn{n}"),
                prev,
                c,
                3,
                1,
                1,
            )?);
            prev = c;
        }
        Ok(Self { blocks, out: prev })
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.out
    }

    /// The pooled last-block feature and every block's pooled output.
    pub(crate) fn forward(&self, x: &Tensor, mode: ModelMode) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut hidden = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            h = max_pool2(&block.forward(&h, mode)?.relu()?)?;
            hidden.push(global_avg_pool(&h)?);
        }
        let feature = hidden.last().expect("a convnet has a block").clone();
        Ok((feature, hidden))
    }
}

/// conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU.
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    /// 1×1 conv + BN where the shape changes (option B of He et al.); identity elsewhere.
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn forward(&self, x: &Tensor, mode: ModelMode) -> Result<Tensor> {
        let out = self.conv1.forward(x, mode)?.relu()?;
        let out = self.conv2.forward(&out, mode)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, mode)?,
            None => x.clone(),
        };
        (out + shortcut)?.relu()
    }
}

/// CIFAR ResNet-(6n+2): stem `conv1`/`bn1`, then `layer{1,2,3}.{b}.{conv1,bn1,conv2,bn2}`
/// and `layer{s}.0.downsample.{0,1}` (torchvision's names).
pub(crate) struct Resnet {
    stem: ConvBn,
    stages: Vec<Vec<BasicBlock>>,
    out: usize,
}

impl Resnet {
    pub(crate) fn new(
        init: &mut ParamInit<'_>,
        c_in: usize,
        depth: usize,
        width: usize,
    ) -> Result<Self> {
        let n = (depth - 2) / 6;
        let stem = ConvBn::new(init, "conv1", "bn1", c_in, width, 3, 1, 1)?;
        let mut stages = Vec::with_capacity(3);
        let mut prev = width;
        for s in 0..3 {
            let planes = width << s;
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let name = format!("layer{}.{b}", s + 1);
                let conv1 = ConvBn::new(
                    init,
                    &format!("{name}.conv1"),
                    &format!("{name}.bn1"),
                    prev,
                    planes,
                    3,
                    stride,
                    1,
                )?;
                let conv2 = ConvBn::new(
                    init,
                    &format!("{name}.conv2"),
                    &format!("{name}.bn2"),
                    planes,
                    planes,
                    3,
                    1,
                    1,
                )?;
                let downsample = if stride != 1 || prev != planes {
                    Some(ConvBn::new(
                        init,
                        &format!("{name}.downsample.0"),
                        &format!("{name}.downsample.1"),
                        prev,
                        planes,
                        1,
                        stride,
                        0,
                    )?)
                } else {
                    None
                };
                blocks.push(BasicBlock {
                    conv1,
                    conv2,
                    downsample,
                });
                prev = planes;
            }
            stages.push(blocks);
        }
        Ok(Self {
            stem,
            stages,
            out: prev,
        })
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.out
    }

    /// The pooled last-stage feature and every stage's pooled output.
    pub(crate) fn forward(&self, x: &Tensor, mode: ModelMode) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = self.stem.forward(x, mode)?.relu()?;
        let mut hidden = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                h = block.forward(&h, mode)?;
            }
            hidden.push(global_avg_pool(&h)?);
        }
        let feature = hidden.last().expect("a resnet has stages").clone();
        Ok((feature, hidden))
    }
}

#[cfg(test)]
mod tests;
