//! Functions stay small enough to read at once: an HTTP handler is a thin translation between the
//! request and the layers below (about 15 lines with its signature), and any function in
//! `platform/src` over 80 lines says, in the comment above it, why it is long ("long on purpose" or
//! "long because"). Read from the source as `cargo fmt` leaves it: a function ends at the first `}`
//! at its own indentation.

use std::path::PathBuf;

mod source;

/// Handlers name four or five extractors on lines of their own, so "about 15 lines" is 18 with
/// the signature.
const MAX_HANDLER_LINES: usize = 18;
const MAX_LINES_WITHOUT_A_REASON: usize = 80;

#[derive(Debug, PartialEq)]
struct Function {
    name: String,
    /// 1-based line of the `fn`.
    line: usize,
    lines: usize,
    /// The `#[...]` attributes and comments directly above it.
    preamble: String,
}

impl Function {
    fn is_handler(&self) -> bool {
        self.preamble.contains("#[utoipa::path")
    }

    fn says_why_it_is_long(&self) -> bool {
        let text = self.preamble.to_lowercase().replace("///", " ").replace("//", " ");
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        text.contains("long on purpose") || text.contains("long because")
    }
}

/// The name of the function declared on `line`, if one is (not a declaration without a body).
fn declared(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w == "fn" {
            let name = words.next()?;
            return Some(&name[..name.find(['(', '<']).unwrap_or(name.len())]);
        }
        let qualifier = w.starts_with("pub") || matches!(w, "async" | "const" | "unsafe" | "extern" | "\"C\"");
        if !qualifier {
            return None;
        }
    }
    None
}

fn functions(text: &str) -> Vec<Function> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = declared(line) else { continue };
        let indent = &line[..line.len() - line.trim_start().len()];
        // The signature ends at the line that opens the body (or ends the declaration with `;`).
        let Some(open) = (i..lines.len()).find(|&j| lines[j].ends_with('{') || lines[j].ends_with(';')) else {
            continue;
        };
        if lines[open].ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        let Some(end) = (open..lines.len()).find(|&j| lines[j] == close) else { continue };
        let above = lines[..i].iter().rev().take_while(|l| {
            let l = l.trim_start();
            l.starts_with("//")
                || l.starts_with("#[")
                || l.starts_with(')')
                || l.starts_with("params(")
                || l.starts_with("responses(")
                || l.starts_with("request_body(")
                || l.starts_with('(')
        });
        let mut preamble: Vec<&str> = above.copied().collect();
        preamble.reverse();
        out.push(Function { name: name.to_owned(), line: i + 1, lines: end - i + 1, preamble: preamble.join("\n") });
    }
    out
}

/// Every function of `platform/src`, with the file it is in.
fn platform_functions() -> Vec<(PathBuf, Function)> {
    let src = source::platform_src();
    let mut out = Vec::new();
    for file in source::rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(&src).unwrap().to_owned();
        out.extend(functions(&text).into_iter().map(|f| (rel.clone(), f)));
    }
    out
}

#[test]
fn handlers_are_thin() {
    let all = platform_functions();
    let handlers: Vec<_> = all.iter().filter(|(_, f)| f.is_handler()).collect();
    assert!(handlers.len() > 20, "the handlers were found: {}", handlers.len());
    let long: Vec<String> = handlers
        .iter()
        .filter(|(_, f)| f.lines > MAX_HANDLER_LINES)
        .map(|(file, f)| format!("{}:{} {} is {} lines", file.display(), f.line, f.name, f.lines))
        .collect();
    assert!(long.is_empty(), "handlers over {MAX_HANDLER_LINES} lines:\n{}", long.join("\n"));
}

#[test]
fn a_long_function_says_why() {
    let all = platform_functions();
    assert!(all.len() > 500, "the functions were found: {}", all.len());
    let unexplained: Vec<String> = all
        .iter()
        .filter(|(_, f)| f.lines > MAX_LINES_WITHOUT_A_REASON && !f.says_why_it_is_long())
        .map(|(file, f)| format!("{}:{} {} is {} lines", file.display(), f.line, f.name, f.lines))
        .collect();
    assert!(
        unexplained.is_empty(),
        "functions over {MAX_LINES_WITHOUT_A_REASON} lines with no comment saying why:\n{}",
        unexplained.join("\n")
    );
}

#[test]
fn the_reader_measures_functions_and_their_comments() {
    let text = "\
/// Short.
fn a() {
    x();
}

impl T {
    /// Long on purpose: one
    /// match.
    #[utoipa::path(get, path = \"/x\",
        responses((status = 200)))]
    pub async fn b(
        y: u8,
    ) -> u8 {
        if y {
        }
        y
    }

    fn declared_only(&self);
}
";
    let found = functions(text);
    let names: Vec<_> = found.iter().map(|f| (f.name.as_str(), f.line, f.lines)).collect();
    assert_eq!(names, [("a", 2, 3), ("b", 11, 7)]);
    assert!(!found[0].says_why_it_is_long() && !found[0].is_handler());
    assert!(found[1].says_why_it_is_long() && found[1].is_handler());
}
