//! A run that would take over another recipe file's name (the `recipe_name_taken` warning).

use std::fs;

use crate::plan::Plan;
use crate::store::{Invocation, Store, StoreError};

/// A run that takes over a recipe name last run from another file with other content: the
/// copy of a recipe that kept `name: quickstart` would silently replace the `quickstart`
/// results (and `gc` would then remove the stages only the original had).
#[derive(Debug, Clone)]
pub struct NameClash {
    pub recipe: String,
    /// The file of this run, as typed.
    pub file: String,
    /// The last run under this name.
    pub previous: Invocation,
}

impl NameClash {
    pub fn message(&self) -> String {
        format!(
            "recipe name `{r}` was last run from {prev} (other content, sha256 {sha}); running {file} under the same name replaces those results (`rkd-orch results {r}` will show this run's). To keep both, give this one its own name: change `name:` in {file}, or add --name NAME",
            r = self.recipe,
            prev = self.previous.recipe_file,
            sha = &self.previous.recipe_sha256[..12.min(self.previous.recipe_sha256.len())],
            file = self.file,
        )
    }

    /// The `--json` event's fields.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "recipe_name_taken",
            "recipe": self.recipe,
            "file": self.file,
            "previous_file": self.previous.recipe_file,
            "previous_sha256": self.previous.recipe_sha256,
            "previous_invocation": self.previous.id,
        })
    }
}

/// The absolute path of a recipe file, where it resolves.
pub fn recipe_path(file: &str) -> Option<String> {
    fs::canonicalize(file).ok().map(|p| p.display().to_string())
}

/// Whether running `plan` would take over a name that another file with other content was
/// last run under. The same file edited is not a clash (that is how recipes evolve), nor is
/// the same content under another path (a moved or checked-out-again file).
pub fn name_clash(store: &Store, plan: &Plan) -> Result<Option<NameClash>, StoreError> {
    let Some(previous) = store.invocation(&plan.recipe)? else {
        return Ok(None);
    };
    if previous.recipe_sha256 == plan.recipe_sha256 {
        return Ok(None);
    }
    let here = recipe_path(&plan.file);
    // Runs before schema version 3 (and rebuilt databases) recorded the file only as typed:
    // resolve it from here, which is right whenever the runs are started from one directory.
    let there = previous
        .recipe_path
        .clone()
        .or_else(|| recipe_path(&previous.recipe_file));
    let same_file = match (&here, &there) {
        (Some(a), Some(b)) => a == b,
        _ => previous.recipe_file == plan.file,
    };
    Ok((!same_file).then(|| NameClash {
        recipe: plan.recipe.clone(),
        file: plan.file.clone(),
        previous,
    }))
}
