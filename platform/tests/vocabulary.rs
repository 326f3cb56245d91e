//! The states of jobs and instances are spelled once, in `domain.rs`; Rust code compares the enums.
//! SQL still names them as words (the store keeps them as text). These tests hold the two together:
//! every state word in the platform's SQL is one of the domain's, and the store's CHECK constraints
//! allow exactly the domain's words, so a misspelt state in a query cannot silently match nothing.

use std::collections::BTreeSet;
use std::path::Path;

use mysimbdp::domain::{Desired, InstanceState, JobState};

mod source;

fn words<T: Copy>(all: &[T], word: fn(T) -> &'static str) -> BTreeSet<String> {
    all.iter().map(|v| word(*v).to_owned()).collect()
}

fn domain_words() -> BTreeSet<String> {
    let mut all = words(JobState::ALL, JobState::as_str);
    all.extend(words(InstanceState::ALL, InstanceState::as_str));
    all.extend(words(Desired::ALL, Desired::as_str));
    all
}

/// The platform's source files with their text, but `domain.rs` and the coredms backends (which query
/// PostgreSQL's own views: `pg_stat_activity.state = 'active'`).
fn sources() -> Vec<(String, String)> {
    let files = source::rust_files(&source::platform_src());
    let ours =
        files.into_iter().filter(|p| !p.ends_with("domain.rs") && !p.components().any(|c| c.as_os_str() == "coredms"));
    ours.map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// The quoted words compared with a `state` or `desired` column in `text`: `state = 'x'`,
/// `state <> 'x'`, `state in ('x', 'y')`, `state not in (...)`.
fn state_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for column in ["state", "desired"] {
        for (at, _) in text.match_indices(column) {
            // A whole word, not `states` or `desired_state`.
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = text[at + column.len()..].trim_start();
            let rest =
                ["<>", "!=", "=", "not in", "in"].iter().find_map(|op| rest.strip_prefix(op)).map(str::trim_start);
            let Some(rest) = rest else { continue };
            let list = match rest.strip_prefix('(') {
                Some(inner) => &inner[..inner.find(')').unwrap_or(inner.len())],
                None => &rest[..rest.find([' ', ')', ',', '\n']).unwrap_or(rest.len())],
            };
            for item in list.split(',') {
                let item = item.trim();
                if let Some(word) = item.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')) {
                    out.push(word.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_state_word_in_the_platforms_sql_is_a_domain_word() {
    let files = sources();
    let known = domain_words();
    let mut seen = 0;
    let mut unknown = Vec::new();
    for (file, text) in &files {
        for word in state_words(text) {
            seen += 1;
            if !known.contains(&word) {
                unknown.push(format!("{file}: '{word}'"));
            }
        }
    }
    assert!(seen > 50, "the SQL's state words were found ({seen})");
    assert!(unknown.is_empty(), "state words no domain enum has:\n{}", unknown.join("\n"));
}

/// The words of the last `check (state in (...))` on `table` across the migrations, in order.
fn checked_states(table: &str) -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    let mut found = BTreeSet::new();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(start) = text.find(&format!("table {table} (")).or_else(|| text.find(&format!("table {table}\n")))
        else {
            continue;
        };
        let body = &text[start..];
        let body = &body[..body.find(");").unwrap_or(body.len())];
        if let Some(check) = body.find("check (state in") {
            found = state_words(&body[check + "check (".len()..]).into_iter().collect();
        }
    }
    found
}

#[test]
fn the_stores_checks_allow_exactly_the_domains_states() {
    assert_eq!(checked_states("jobs"), words(JobState::ALL, JobState::as_str));
    assert_eq!(checked_states("stream_instances"), words(InstanceState::ALL, InstanceState::as_str));
}

#[test]
fn the_scan_reads_every_form() {
    let sql = "where state in ('queued', 'running') and desired = 'stopped' and x.state <> 'failed' and states = 'no'";
    assert_eq!(state_words(sql), ["queued", "running", "failed", "stopped"]);
    assert!(state_words("set state = $2, desired_state = 'x'").is_empty());
}
