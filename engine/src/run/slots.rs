//! Resource slots: where a stage runs. Without GPUs there are `--jobs` CPU slots, each
//! stage limited to `--threads-per-job` threads so that slots do not oversubscribe the cores.
//! With `--gpus`, one slot per GPU id, and the stage sees only its GPU
//! (`CUDA_VISIBLE_DEVICES`).

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    Cpu { threads: usize },
    Gpu { id: String, threads: usize },
}

impl Slot {
    /// How progress lines and the results name the device.
    pub fn device(&self) -> String {
        match self {
            Slot::Cpu { threads } => format!("cpu×{threads}"),
            Slot::Gpu { id, .. } => format!("gpu{id}"),
        }
    }

    /// Environment of a stage process in this slot.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Slot::Cpu { threads } => vec![
                ("RAYON_NUM_THREADS", threads.to_string()),
                // A CPU stage must not grab a GPU by accident.
                ("CUDA_VISIBLE_DEVICES", String::new()),
            ],
            Slot::Gpu { id, threads } => vec![
                ("RAYON_NUM_THREADS", threads.to_string()),
                ("CUDA_VISIBLE_DEVICES", id.clone()),
            ],
        }
    }
}

/// A pool of slots; a stage takes one to start and gives it back when it ends.
#[derive(Debug)]
pub struct Slots {
    slots: Vec<Slot>,
    free: Vec<bool>,
}

impl Slots {
    pub fn cpu(jobs: usize, threads: usize) -> Self {
        Self::new(vec![
            Slot::Cpu {
                threads: threads.max(1)
            };
            jobs.max(1)
        ])
    }

    pub fn gpus(ids: &[String], threads: usize) -> Self {
        Self::new(
            ids.iter()
                .map(|id| Slot::Gpu {
                    id: id.clone(),
                    threads: threads.max(1),
                })
                .collect(),
        )
    }

    /// A pool of the given slots.
    pub fn new_from(slots: &[Slot]) -> Self {
        Self::new(slots.to_vec())
    }

    fn new(slots: Vec<Slot>) -> Self {
        let free = vec![true; slots.len()];
        Slots { slots, free }
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The lowest free slot, marked busy.
    pub fn take(&mut self) -> Option<usize> {
        let i = self.free.iter().position(|f| *f)?;
        self.free[i] = false;
        Some(i)
    }

    pub fn give_back(&mut self, i: usize) {
        self.free[i] = true;
    }

    pub fn get(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    /// `2 jobs × 1 thread` / `GPUs 0,1`, for the header line.
    pub fn describe(&self) -> String {
        match self.slots.first() {
            Some(Slot::Gpu { .. }) => {
                let ids: Vec<String> = self
                    .slots
                    .iter()
                    .filter_map(|s| match s {
                        Slot::Gpu { id, .. } => Some(id.clone()),
                        Slot::Cpu { .. } => None,
                    })
                    .collect();
                format!("GPUs {}", ids.join(","))
            }
            Some(Slot::Cpu { threads }) => {
                let n = self.slots.len();
                format!(
                    "{n} job{} × {threads} thread{}",
                    if n == 1 { "" } else { "s" },
                    if *threads == 1 { "" } else { "s" }
                )
            }
            None => "no slots".into(),
        }
    }
}

/// Parses `--gpus`: `0,1,3` or `all` (the GPUs `nvidia-smi -L` lists).
pub fn parse_gpus(arg: &str) -> Result<Vec<String>, String> {
    if arg == "all" {
        let out = std::process::Command::new("nvidia-smi")
            .arg("-L")
            .output()
            .map_err(|e| format!("--gpus all: cannot run nvidia-smi to list the GPUs ({e}); name them instead, e.g. --gpus 0,1"))?;
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("GPU "))
            .filter_map(|l| l.split(':').next())
            .map(|s| s.trim().to_string())
            .collect();
        if ids.is_empty() {
            return Err("--gpus all: nvidia-smi lists no GPU".into());
        }
        return Ok(ids);
    }
    let ids: Vec<String> = arg.split(',').map(|s| s.trim().to_string()).collect();
    if ids
        .iter()
        .any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("--gpus {arg}: expected GPU ids like 0,1 or `all`"));
    }
    let mut seen = ids.clone();
    seen.sort();
    seen.dedup();
    if seen.len() != ids.len() {
        return Err(format!("--gpus {arg}: a GPU is listed twice"));
    }
    Ok(ids)
}

/// Whether this build can run stages on a GPU. Every loss kernel is CPU code (candle
/// `CustomOp`s with CPU implementations only), so not yet: `--gpus` is refused with this
/// explanation rather than silently running on the CPU.
pub fn gpu_support() -> Result<(), String> {
    Err("this build of rkd-orch runs stages on the CPU only (its loss and convolution kernels are CPU code), so --gpus cannot be honoured; use --jobs N --threads-per-job T for CPU slots".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_slots_hand_out_distinct_devices() {
        let ids = parse_gpus("0,2").unwrap();
        let mut s = Slots::gpus(&ids, 4);
        let a = s.take().unwrap();
        let b = s.take().unwrap();
        assert!(s.take().is_none(), "two GPUs, two stages at a time");
        assert_eq!(s.get(a).env()[1], ("CUDA_VISIBLE_DEVICES", "0".to_string()));
        assert_eq!(s.get(b).env()[1], ("CUDA_VISIBLE_DEVICES", "2".to_string()));
        s.give_back(a);
        assert_eq!(s.take(), Some(a));
        assert_eq!(s.describe(), "GPUs 0,2");
        assert!(parse_gpus("0,0").is_err());
        assert!(parse_gpus("x").is_err());
    }

    #[test]
    fn cpu_slots_limit_threads() {
        let mut s = Slots::cpu(2, 1);
        assert_eq!(s.describe(), "2 jobs × 1 thread");
        let a = s.take().unwrap();
        assert_eq!(s.get(a).env()[0], ("RAYON_NUM_THREADS", "1".to_string()));
        assert_eq!(s.get(a).device(), "cpu×1");
        assert!(gpu_support().is_err());
    }
}
