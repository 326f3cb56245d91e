//! Tests wait on what they can observe (`eventually` on a state, loop passes, committed offsets), not
//! on clocks: a fixed sleep is too short on a loaded machine and too long everywhere else. Short
//! sleeps pace a poll or a stimulus (a slow writer, a trickle); none in a test body is over 200 ms.

use std::path::Path;

const MAX_SLEEP_MS: u64 = 200;

/// Every `sleep(...)` call in `text` (not `pg_sleep`, and not the shell's `sleep 1` in scripts),
/// with its line and what it is given.
fn sleeps(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("sleep(") {
            let before = &line[..at];
            if before.ends_with("pg_") || before.ends_with('_') {
                continue;
            }
            let arg = &line[at + "sleep(".len()..];
            out.push((n + 1, arg.to_owned()));
        }
    }
    out
}

/// The milliseconds of a `Duration::from_millis(N)` or `Duration::from_secs(N)` argument; `None`
/// for anything else (a computed duration is no fixed sleep to check, and is refused as unknown).
fn literal_ms(arg: &str) -> Option<u64> {
    let number = |rest: &str| rest[..rest.find(')')?].trim().parse::<u64>().ok();
    let arg = arg.trim_start_matches("std::time::");
    if let Some(rest) = arg.strip_prefix("Duration::from_millis(") {
        number(rest)
    } else {
        arg.strip_prefix("Duration::from_secs(").and_then(number).map(|s| s * 1000)
    }
}

#[test]
fn no_test_sleeps_longer_than_200_ms() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("e2e")).unwrap().flatten().map(|e| e.path()).collect();
    files.push(root.join("support/lib.rs"));
    let mut found = 0;
    let mut long = Vec::new();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "rs") && !f.ends_with("waits.rs")) {
        for (line, arg) in sleeps(&std::fs::read_to_string(file).unwrap()) {
            found += 1;
            if literal_ms(&arg).is_none_or(|ms| ms > MAX_SLEEP_MS) {
                long.push(format!("{}:{line}: sleep({arg}", file.display()));
            }
        }
    }
    assert!(found > 10, "the sleeps were found: {found}");
    assert!(long.is_empty(), "sleeps over {MAX_SLEEP_MS} ms (or of no fixed length) in tests:\n{}", long.join("\n"));
}

#[test]
fn the_check_reads_sleeps_and_their_lengths() {
    let text = "tokio::time::sleep(Duration::from_millis(50)).await;\n\
                std::thread::sleep(std::time::Duration::from_secs(2));\n\
                psql(\"select pg_sleep(60)\"); run(\"sleep 1\");\n\
                tokio::time::sleep(handover() + x).await;";
    let found: Vec<(usize, Option<u64>)> = sleeps(text).iter().map(|(n, a)| (*n, literal_ms(a))).collect();
    assert_eq!(found, [(1, Some(50)), (2, Some(2000)), (4, None)]);
}
