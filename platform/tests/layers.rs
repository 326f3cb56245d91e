//! The platform's top-level modules depend on one another in one direction only: a cycle is how a
//! "small" change in one layer starts needing changes in every other. Read from the source: every
//! `crate::<module>` path (and `use crate::{a, b}` list) in a module's files is an edge to that module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod source;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The modules `text` names through `crate::`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            // Only the first segment of each item: `{a::b, c}` names `a` and `c`.
            out.extend(list.split(',').map(|item| ident(item.trim()).to_owned()));
        } else {
            out.insert(ident(rest).to_owned());
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in source::rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        // The binaries and the crate root wire everything together; they are no layer.
        if matches!(top.as_str(), "main" | "lib" | "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(top.clone()).or_default();
        deps.extend(named_modules(&text).into_iter().filter(|m| *m != top));
    }
    graph
}

/// A cycle through `from`, as the path of modules, if there is one.
fn cycle_through(graph: &Graph, from: &str) -> Option<Vec<String>> {
    fn walk(graph: &Graph, at: &str, goal: &str, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == goal {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, next, goal, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    walk(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

fn cycles(graph: &Graph) -> Vec<String> {
    graph.keys().filter_map(|m| cycle_through(graph, m)).map(|c| c.join(" -> ")).collect()
}

#[test]
fn the_platforms_modules_form_no_cycle() {
    let src = source::platform_src();
    let graph = graph(&src);
    assert!(graph.len() > 10, "the modules were read: {graph:?}");
    let found = cycles(&graph);
    assert!(found.is_empty(), "module cycles in platform/src:\n{}", found.join("\n"));
}

#[test]
fn the_configuration_depends_on_nothing_of_the_platform() {
    let src = source::platform_src();
    let deps = &graph(&src)["config"];
    assert!(deps.is_empty(), "config.rs uses {deps:?}");
}

#[test]
fn the_check_finds_a_cycle_and_reads_use_lists() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().extend(named_modules("use crate::{b::X, c};"));
    g.entry("b".into()).or_default().extend(named_modules("fn f() { crate::c::g() }"));
    g.entry("c".into()).or_default();
    assert_eq!(g["a"], BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    assert!(cycles(&g).is_empty());
    g.get_mut("c").unwrap().insert("a".into());
    assert_eq!(cycles(&g)[0], "a -> b -> c -> a");
}

#[test]
fn the_api_reaches_no_roles_internals() {
    // The control plane records what a tenant asks (instances wanted or stopped, a job retried) in the
    // store; the batch manager, the stream manager and the monitor act on it.
    let src = source::platform_src();
    let deps = &graph(&src)["api"];
    let roles: Vec<_> = deps.iter().filter(|m| matches!(m.as_str(), "batch" | "stream" | "monitor")).collect();
    assert!(roles.is_empty(), "api/ uses {roles:?}");
}
