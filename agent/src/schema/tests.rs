//! `docs/spans.md` and the schema name the same span attributes.

use std::collections::BTreeSet;

use super::metric;

const DOC: &str = include_str!("../../../docs/spans.md");

/// Prefixes of attribute names; a backticked name with one of them is taken as an attribute.
const NAMESPACES: &[&str] = &[
    "gen_ai.",
    "http.",
    "url.",
    "server.",
    "client.",
    "process.",
    "error.",
    "infertap.",
    "k8s.",
    "rpc.",
    "llm_d.",
];

/// Names the page mentions that are not span attributes: the routing metrics' instruments.
const NOT_ATTRIBUTES: &[&str] = &[
    metric::INFERTAP_EPP_DECISION_DURATION,
    metric::INFERTAP_EPP_DECISIONS,
    metric::INFERTAP_EPP_REJECTIONS,
    metric::INFERTAP_EPP_ROUTED_TIME_TO_FIRST_TOKEN,
    metric::INFERTAP_EPP_ROUTED_INPUT_TOKENS,
    metric::INFERTAP_EPP_ROUTED_CACHED_INPUT_TOKENS,
];

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Every attribute name the page mentions in backticks: `a.b.{c,d}` expands to both, `.x` right
/// after `a.b.c` means `a.b.x`, and `a.b = value` is `a.b`. Wildcards (`server.*`) are returned
/// as prefixes.
fn documented() -> (BTreeSet<String>, Vec<String>) {
    let mut names = BTreeSet::new();
    let mut wildcards = Vec::new();
    let mut last = String::new();
    for (i, token) in DOC.split('`').enumerate() {
        if i % 2 == 0 {
            continue; // outside backticks
        }
        let token = token.split(" =").next().unwrap_or("").trim();
        if let Some(prefix) = token.strip_suffix('*') {
            if NAMESPACES.iter().any(|n| prefix.starts_with(n)) {
                wildcards.push(prefix.to_string());
            }
            continue;
        }
        let expanded: Vec<String> = if let Some(sibling) = token.strip_prefix('.') {
            match last.rfind('.') {
                Some(dot) if is_name(sibling) => vec![format!("{}.{sibling}", &last[..dot])],
                _ => continue,
            }
        } else if let (Some(open), Some(body)) = (token.find('{'), token.strip_suffix('}')) {
            let stem = &token[..open];
            body[open + 1..]
                .split(',')
                .map(|s| format!("{stem}{}", s.trim()))
                .collect()
        } else {
            vec![token.to_string()]
        };
        for name in expanded {
            if is_name(&name) && NAMESPACES.iter().any(|n| name.starts_with(n)) {
                last = name.clone();
                names.insert(name);
            }
        }
    }
    (names, wildcards)
}

#[test]
fn every_documented_attribute_is_in_the_schema() {
    let (names, wildcards) = documented();
    assert!(names.len() > 50, "the page was read: {names:?}");
    let schema: BTreeSet<&str> = super::attributes().collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !schema.contains(n.as_str()) && !NOT_ATTRIBUTES.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/spans.md names attributes the schema lacks: {missing:?}"
    );
    for w in &wildcards {
        assert!(
            super::attributes().any(|a| a.starts_with(w.as_str())),
            "docs/spans.md names `{w}*`, which matches no attribute"
        );
    }
}

#[test]
fn every_schema_attribute_is_documented() {
    let (names, _) = documented();
    let undocumented: Vec<&str> = super::attributes()
        .filter(|a| !names.contains(*a))
        .collect();
    assert!(
        undocumented.is_empty(),
        "attributes missing from docs/spans.md: {undocumented:?}"
    );
}

#[test]
fn attribute_names_are_unique() {
    let set: BTreeSet<&str> = super::attributes().collect();
    assert_eq!(set.len(), super::attributes().count());
}
