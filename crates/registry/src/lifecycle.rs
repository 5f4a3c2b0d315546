//! Lifecycle policies in ECR's JSON form, and their evaluation over a repository's images. Sans-IO: the
//! caller gives the images and the clock; the result is the list of digests to expire.
//!
//! ```json
//! {"rules": [{"rulePriority": 1, "description": "keep 5 releases",
//!   "selection": {"tagStatus": "tagged", "tagPrefixList": ["v"],
//!                 "countType": "imageCountMoreThan", "countNumber": 5},
//!   "action": {"type": "expire"}}]}
//! ```
//!
//! Semantics (as ECR's): rules run from the lowest `rulePriority` up; an image selected by a rule's
//! tag criteria is claimed by that rule and no lower-priority rule can expire it. `tagged` needs a
//! `tagPrefixList`, and an image matches it when each prefix starts one of its tags. `any` must be the
//! rule with the highest priority number. `imageCountMoreThan` keeps the N most recently pushed images
//! and expires the rest; `sinceImagePushed` (unit `days`) expires images pushed more than N days ago.

use std::collections::BTreeSet;

use crate::digest::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagStatus {
    Tagged,
    Untagged,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CountType {
    ImageCountMoreThan,
    SinceImagePushed,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selection {
    pub tag_status: TagStatus,
    #[serde(default)]
    pub tag_prefix_list: Vec<String>,
    pub count_type: CountType,
    #[serde(default)]
    pub count_unit: Option<String>,
    pub count_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub rule_priority: u32,
    #[serde(default)]
    pub description: Option<String>,
    pub selection: Selection,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

/// Why a policy text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("lifecycle policy is not valid: {0}")]
    Json(String),
    #[error("lifecycle policy is not valid: {0}")]
    Rule(String),
}

/// An image as lifecycle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub digest: Digest,
    pub tags: Vec<String>,
    /// Seconds since the Unix epoch.
    pub pushed_at: u64,
}

/// Parse and validate a policy.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let mut p: Policy = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
    if p.rules.is_empty() {
        return Err(PolicyError::Rule("no rules".into()));
    }
    p.rules.sort_by_key(|r| r.rule_priority);
    let mut seen = BTreeSet::new();
    let last = p.rules.len() - 1;
    for (i, r) in p.rules.iter().enumerate() {
        let n = r.rule_priority;
        if n == 0 || !seen.insert(n) {
            return Err(PolicyError::Rule(format!(
                "rulePriority {n} must be unique and positive"
            )));
        }
        if r.action.kind != "expire" {
            return Err(PolicyError::Rule(format!(
                "rule {n}: action type must be \"expire\""
            )));
        }
        let s = &r.selection;
        match s.tag_status {
            TagStatus::Tagged if s.tag_prefix_list.is_empty() => {
                return Err(PolicyError::Rule(format!(
                    "rule {n}: tagStatus tagged needs a tagPrefixList"
                )));
            }
            TagStatus::Untagged | TagStatus::Any if !s.tag_prefix_list.is_empty() => {
                return Err(PolicyError::Rule(format!(
                    "rule {n}: tagPrefixList only goes with tagStatus tagged"
                )));
            }
            TagStatus::Any if i != last => {
                return Err(PolicyError::Rule(format!(
                    "rule {n}: a tagStatus any rule must have the highest rulePriority"
                )));
            }
            _ => {}
        }
        match (s.count_type, s.count_unit.as_deref()) {
            (CountType::SinceImagePushed, Some("days")) => {}
            (CountType::SinceImagePushed, _) => {
                return Err(PolicyError::Rule(format!(
                    "rule {n}: sinceImagePushed needs countUnit \"days\""
                )));
            }
            (CountType::ImageCountMoreThan, None) => {}
            (CountType::ImageCountMoreThan, Some(_)) => {
                return Err(PolicyError::Rule(format!(
                    "rule {n}: imageCountMoreThan takes no countUnit"
                )));
            }
        }
        if s.count_number == 0 {
            return Err(PolicyError::Rule(format!(
                "rule {n}: countNumber must be at least 1"
            )));
        }
    }
    Ok(p)
}

fn selects(s: &Selection, img: &Image) -> bool {
    match s.tag_status {
        TagStatus::Any => true,
        TagStatus::Untagged => img.tags.is_empty(),
        TagStatus::Tagged => s
            .tag_prefix_list
            .iter()
            .all(|p| img.tags.iter().any(|t| t.starts_with(p.as_str()))),
    }
}

/// The images `policy` expires at `now`, each with the priority of the rule that expires it.
pub fn evaluate(policy: &Policy, images: &[Image], now: u64) -> Vec<(Digest, u32)> {
    let mut claimed: BTreeSet<&Digest> = BTreeSet::new();
    let mut expired = Vec::new();
    let mut rules: Vec<&Rule> = policy.rules.iter().collect();
    rules.sort_by_key(|r| r.rule_priority);
    for rule in rules {
        let s = &rule.selection;
        let mut candidates: Vec<&Image> = images
            .iter()
            .filter(|i| !claimed.contains(&i.digest) && selects(s, i))
            .collect();
        for c in &candidates {
            claimed.insert(&c.digest);
        }
        match s.count_type {
            CountType::ImageCountMoreThan => {
                // newest first; ties broken by digest for a stable result
                candidates.sort_by(|a, b| {
                    b.pushed_at
                        .cmp(&a.pushed_at)
                        .then_with(|| a.digest.cmp(&b.digest))
                });
                let keep = usize::try_from(s.count_number).unwrap_or(usize::MAX);
                for c in candidates.into_iter().skip(keep) {
                    expired.push((c.digest.clone(), rule.rule_priority));
                }
            }
            CountType::SinceImagePushed => {
                let cutoff = now.saturating_sub(s.count_number.saturating_mul(86_400));
                for c in candidates {
                    if c.pushed_at < cutoff {
                        expired.push((c.digest.clone(), rule.rule_priority));
                    }
                }
            }
        }
    }
    expired
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn img(n: u8, tags: &[&str], pushed_at: u64) -> Image {
        Image {
            digest: Digest::sha256_of(&[n]),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            pushed_at,
        }
    }

    #[test]
    fn validation() {
        assert!(parse("{}").is_err());
        assert!(parse(r#"{"rules":[]}"#).is_err());
        let untagged_with_prefix = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
        assert!(parse(untagged_with_prefix).is_err());
        let any_first = r#"{"rules":[
            {"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
            {"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
        assert!(parse(any_first).is_err());
        let since_no_unit = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countNumber":1},"action":{"type":"expire"}}]}"#;
        assert!(parse(since_no_unit).is_err());
    }

    #[test]
    fn priorities_claim_images() {
        let policy = parse(
            r#"{"rules":[
            {"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}},
            {"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}},
            {"rulePriority":3,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
        )
        .unwrap();
        let day = 86_400;
        let now = 10 * day;
        let images = vec![
            img(1, &["v1"], day),
            img(2, &["v2"], 2 * day),
            img(3, &["v3"], 3 * day),
            img(4, &[], now - 2 * day),
            img(5, &[], now - 100),
            img(6, &["dev"], 5 * day),
            img(7, &["dev2"], 6 * day),
        ];
        let mut out = evaluate(&policy, &images, now);
        out.sort();
        let mut want = vec![
            (Digest::sha256_of(&[1]), 1),
            (Digest::sha256_of(&[4]), 2),
            (Digest::sha256_of(&[6]), 3),
        ];
        want.sort();
        assert_eq!(out, want);
    }
}
