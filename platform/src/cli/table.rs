//! Plain aligned tables for people; `--json` gives scripts the API's own documents instead.

use serde_json::Value;

pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        println!("(none)");
    }
    for row in rows {
        line(row);
    }
}

/// A field of a JSON document as table text: `-` for absent or null.
pub fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// A byte count field as `12.5MiB`.
pub fn bytes(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_f64).map_or("-".into(), |b| mysimbdp::units::ByteSize(b as u64).to_string())
}

/// A timestamp field shortened to the second.
pub fn time(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).map_or("-".into(), |s| s.get(..19).unwrap_or(s).replace('T', " "))
}

pub fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array().map(|a| a.iter().map(f).collect()).unwrap_or_default()
}
