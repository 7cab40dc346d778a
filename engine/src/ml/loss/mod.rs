// TEMPORARY placeholder until the real module lands.
use candle_core::{Result, Tensor};
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
}
impl<'a, T> MatRef<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols }
    }
}
#[derive(Clone, Copy, Debug)]
pub enum Mining {
    Random,
    SemiHard,
    Hard,
}
pub fn mine_triplets(
    _e: MatRef<f32>,
    _l: &[u32],
    _m: Mining,
    _r: &mut dyn FnMut() -> u64,
) -> Vec<[usize; 3]> {
    vec![]
}
pub fn triplet_loss(s: &Tensor, _t: &[[usize; 3]], _m: f64) -> Result<Tensor> {
    s.sqr()?.mean_all()
}
pub fn rkd_distance_loss(s: &Tensor, _t: &Tensor) -> Result<Tensor> {
    s.sqr()?.mean_all()
}
pub fn rkd_angle_loss(s: &Tensor, _t: &Tensor) -> Result<Tensor> {
    s.sqr()?.mean_all()
}
