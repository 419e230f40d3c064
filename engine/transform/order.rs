//! Dependency order of transforms: a transform runs after every transform it reads.

use std::collections::{BTreeMap, BTreeSet};

use super::{Transform, TransformError};

/// Orders transforms so that each runs after the transforms it reads (ties by name).
pub(super) fn sort(transforms: Vec<Transform>) -> Result<Vec<Transform>, TransformError> {
    let names: BTreeSet<String> = transforms.iter().map(|t| t.name.clone()).collect();
    let mut pending: BTreeMap<String, Transform> = transforms
        .into_iter()
        .map(|mut t| {
            t.deps.retain(|d| names.contains(d));
            (t.name.clone(), t)
        })
        .collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .values()
            .filter(|t| t.deps.iter().all(|d| done.contains(d)))
            .map(|t| t.name.clone())
            .collect();
        if ready.is_empty() {
            let cycle = pending
                .values()
                .map(|t| {
                    format!(
                        "{} reads {}",
                        t.file.display(),
                        t.deps.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(TransformError::Cycle { cycle });
        }
        for name in ready {
            let t = pending.remove(&name).expect("ready transform is pending");
            done.insert(name);
            out.push(t);
        }
    }
    Ok(out)
}
