//! Checks that a file's content is what its extension claims, from its first 64 KiB, before any app
//! sees it: text not binary, JSON lines that parse, CSV rows that match the header's width.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::agreement::Format;

const SAMPLE: usize = 64 << 10;

/// `Err` says in words why the content is not `format`. `size` is the file's (frozen) size.
pub fn sniff(file: &File, size: u64, format: Format) -> std::io::Result<Result<(), String>> {
    // Sized to the file: zeroing 64 KiB for each of thousands of small files is measurable.
    let want = SAMPLE.min(size as usize);
    let mut sample = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut sample[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    sample.truncate(filled);
    Ok(check(&sample, format))
}

pub fn check(sample: &[u8], format: Format) -> Result<(), String> {
    if sample.is_empty() {
        return Err("the file is empty".into());
    }
    if let Some(pos) = sample.iter().position(|b| *b == 0) {
        return Err(format!("binary content (NUL byte at offset {pos}), not {format}"));
    }
    let text = match std::str::from_utf8(sample) {
        Ok(t) => t,
        // A sample cut in the middle of a character is fine; anything else is not text.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&sample[..e.valid_up_to()]).expect("valid prefix"),
        Err(e) => return Err(format!("not UTF-8 text (invalid byte at offset {}), not {format}", e.valid_up_to())),
    };
    let complete = sample.len() < SAMPLE;
    match format {
        Format::Jsonl => check_jsonl(text, complete),
        Format::Json => match text.trim_start().chars().next() {
            Some('{' | '[') => Ok(()),
            _ => Err("does not start with `{` or `[`, not json".into()),
        },
        Format::Csv => check_delimited(text, ',', format, complete),
        Format::Tsv => check_delimited(text, '\t', format, complete),
    }
}

fn check_jsonl(text: &str, complete: bool) -> Result<(), String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).peekable();
    let mut checked = 0;
    while let Some((n, line)) = lines.next() {
        let last_in_sample = lines.peek().is_none() && !complete;
        if last_in_sample {
            break; // may be cut short by the sample
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err(format!("line {} is JSON but not an object, not jsonl", n + 1)),
            Err(e) => return Err(format!("line {} is not JSON ({e}), not jsonl", n + 1)),
        }
        checked += 1;
        if checked == 20 {
            break;
        }
    }
    if checked == 0 && complete {
        return Err("no JSON lines found, not jsonl".into());
    }
    Ok(())
}

/// Splits the start of `text` into records, honouring quotes (which may hold delimiters and newlines),
/// and returns the field count of the first few complete records.
fn record_widths(text: &str, delimiter: char, max: usize) -> Vec<(usize, usize)> {
    let (mut widths, mut fields, mut in_quotes, mut line) = (Vec::new(), 1, false, 1);
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            c if c == delimiter && !in_quotes => fields += 1,
            '\n' => {
                line += 1;
                if !in_quotes {
                    widths.push((record_line, fields));
                    if widths.len() == max {
                        break;
                    }
                    fields = 1;
                    record_line = line;
                }
            }
            _ => {}
        }
    }
    widths
}

fn check_delimited(text: &str, delimiter: char, format: Format, complete: bool) -> Result<(), String> {
    let first = text.trim_start();
    if first.starts_with('{') || first.starts_with('[') {
        return Err(format!("looks like JSON, not {format}"));
    }
    let mut widths = record_widths(text, delimiter, 20);
    if complete && !text.ends_with('\n') {
        // the last record has no newline; count it too
        let all = record_widths(&format!("{text}\n"), delimiter, 20);
        widths = all;
    }
    widths.retain(|(_, w)| *w > 0);
    let Some(&(_, header)) = widths.first() else {
        return Ok(()); // a single very long header line; nothing to compare yet
    };
    for &(line, width) in &widths[1..] {
        let blank = width == 1 && text.lines().nth(line - 1).is_some_and(|l| l.trim().is_empty());
        if width != header && !blank {
            return Err(format!("row at line {line} has {width} fields but the header has {header}, not {format}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_files_pass() {
        assert_eq!(check(b"a,b,c\n1,2,3\n\"x,y\",2,3\n", Format::Csv), Ok(()));
        assert_eq!(check(b"a,b\n\"multi\nline\",2\n", Format::Csv), Ok(()));
        assert_eq!(check(b"a,b\n1,2", Format::Csv), Ok(()));
        assert_eq!(check(b"{\"a\":1}\n\n{\"a\":2}\n", Format::Jsonl), Ok(()));
        assert_eq!(check(b"a\tb\n1\t2\n", Format::Tsv), Ok(()));
    }

    #[test]
    fn mismatches_say_what_is_wrong() {
        let cases: [(&[u8], Format, &str); 7] = [
            (b"", Format::Csv, "empty"),
            (b"PK\x03\x04\x00\x00", Format::Csv, "NUL byte"),
            (b"\xff\xfeabc", Format::Jsonl, "not UTF-8"),
            (b"{\"a\":1}\n", Format::Csv, "looks like JSON"),
            (b"a,b,c\n1,2\n", Format::Csv, "line 2 has 2 fields but the header has 3"),
            (b"a,b\n1,2\n", Format::Jsonl, "line 1 is not JSON"),
            (b"[1,2]\n", Format::Jsonl, "not an object"),
        ];
        for (sample, format, expected) in cases {
            let err = check(sample, format).unwrap_err();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
