//! A stage's manifest: everything that can change its results, hashed into its content key.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::StageConfig;
use crate::ml::data::hex;

/// Bump to invalidate every cached stage (e.g. when training semantics change).
pub const CACHE_VERSION: u32 = 1;

/// A stage's manifest — its kind and fully resolved configuration with the data *location*
/// replaced by the data's content fingerprint, the keys of its inputs and [`CACHE_VERSION`] —
/// kept as the canonical JSON text that is hashed into its key (serde_json's maps are sorted,
/// so the text is canonical). Text rather than a `Value` tree: a tree of `BTreeMap`s costs
/// about 10 KB a stage, which was most of the memory of a large plan; the text is a tenth of
/// that. `Display` writes the text, the form the database stores; serde writes it as the JSON
/// object it is (in a stage spec and in `manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest(String);

impl Manifest {
    /// The manifest of a stage of `config` on data of content `data_fingerprint`, whose
    /// inputs (role → content key) are `inputs`.
    pub fn new(
        config: &StageConfig,
        data_fingerprint: &str,
        inputs: &BTreeMap<String, String>,
    ) -> Manifest {
        let mut cfg = serde_json::to_value(config).expect("serialisable config");
        if let Some(data) = cfg.get_mut("data").and_then(Value::as_object_mut) {
            let kind = data["source"]["kind"].clone();
            data.insert(
                "source".into(),
                json!({"kind": kind, "fingerprint": data_fingerprint}),
            );
        }
        Manifest::from_value(&json!({
            "cache_version": CACHE_VERSION,
            "config": cfg,
            "inputs": inputs,
        }))
    }

    pub fn from_value(value: &Value) -> Manifest {
        Manifest(serde_json::to_string(value).expect("serialisable manifest"))
    }

    /// The manifest as a JSON value (for comparisons and pretty printing).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).expect("a manifest is the JSON it was written as")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The content key: the first 128 bits of the SHA-256 of the text, in hex.
    pub fn key(&self) -> String {
        hex(&Sha256::digest(self.0.as_bytes()))[..32].to_string()
    }

    /// The stage's data configuration as the manifest holds it: content, not location.
    pub fn data(&self) -> Value {
        self.to_value()["config"]["data"].clone()
    }
}

impl std::fmt::Display for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Manifest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Manifest, D::Error> {
        Ok(Manifest::from_value(&Value::deserialize(d)?))
    }
}
