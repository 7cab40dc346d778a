//! rkd-orch: a declarative engine for relational knowledge distillation experiments.
//!
//! Data flows one way: `recipe` (YAML → validated stages) → `plan` (DAG + content keys) →
//! `run` (coordinator: one child process per stage) → `stage` (what a stage process does,
//! with `ml`) → `cache` (artifacts, the source of truth) → `store` (SQLite, derived) →
//! `results` (tables). `ml` knows nothing of recipes, plans or SQLite.

pub mod cache;
pub mod exit;
pub mod gc;
pub mod lossbench;
pub mod ml;
pub mod plan;
pub mod plot;
pub mod rebuild;
pub mod recipe;
pub mod report;
pub mod results;
pub mod run;
pub mod spec;
pub mod stage;
pub mod store;
pub mod text;
