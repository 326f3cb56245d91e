//! The staging rules for a file's name, one set for the API and the watcher alike.
//!
//! A tenant can drop any name the file system allows into its folder: bytes that are not UTF-8, a
//! newline, an escape sequence for the operator's terminal. Such a file is not ignored (it would wait
//! for ever, unseen) and not carried through the platform under its raw name (logs, the store and the
//! API are text): it is claimed, recorded with its name escaped and its bytes kept, and rejected as
//! `bad_name` with the reason. Every path the platform derives from a name keeps the name as one
//! path component of its own, so a name the file system took fits wherever the platform puts it.

/// The longest name one path component can carry (NAME_MAX on Linux file systems).
pub const MAX_NAME_BYTES: usize = 255;

/// Whether `raw` is a name the platform ingests under; the error names what is wrong with it.
pub fn check(raw: &[u8]) -> Result<&str, String> {
    if raw.is_empty() {
        return Err("the file name is empty".into());
    }
    if raw.len() > MAX_NAME_BYTES {
        return Err(format!("the file name is {} bytes; at most {MAX_NAME_BYTES} are allowed", raw.len()));
    }
    let name = std::str::from_utf8(raw).map_err(|e| {
        let at = e.valid_up_to();
        format!("the file name is not UTF-8 (byte 0x{:02x} at offset {at}); it is shown as `{}`", raw[at], escaped(raw))
    })?;
    if name.contains('/') || name.contains('\\') {
        return Err(format!("`{name}` contains a path separator; give a plain file name"));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a file name"));
    }
    if let Some((at, c)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "the file name contains a control character (U+{:04X} at offset {at}); it is shown as `{}`",
            c as u32,
            escaped(raw)
        ));
    }
    Ok(name)
}

/// `raw` as printable text: control characters as Rust escapes (`\n`, `\u{1b}`), bytes that are not
/// UTF-8 as `\xNN`; anything else as it is. Names that pass `check` come back unchanged.
pub fn escaped(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `name` cut to what one path component holds, at a character boundary. Only escaped names can be
/// longer (an invalid byte takes four characters); their bytes are kept in the store.
pub fn component(name: &str) -> &str {
    if name.len() <= MAX_NAME_BYTES {
        return name;
    }
    let mut end = MAX_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The staging rules: hidden names and files still being written under a temporary name are not ours.
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_and_hidden_names_are_ignored() {
        for name in [".hidden", "a.csv.part", "a.csv.tmp", ".a.csv"] {
            assert!(is_ignored(name), "{name}");
        }
        for name in ["a.csv", "part.csv", "tmp"] {
            assert!(!is_ignored(name), "{name}");
        }
    }

    #[test]
    fn names_a_file_system_takes_but_the_platform_does_not() {
        let long = "x".repeat(255) + ".csv";
        let cases: [(&[u8], &str); 7] = [
            (b"", "empty"),
            (long.as_bytes(), "259 bytes"),
            (b"bad\xffname.csv", "byte 0xff at offset 3"),
            (b"a\nb.csv", "U+000A at offset 1"),
            (b"\x1b[31mred.csv", "U+001B at offset 0"),
            (b"a\\b.csv", "path separator"),
            (b"..", "not a file name"),
        ];
        for (raw, why) in cases {
            let err = check(raw).unwrap_err();
            assert!(err.contains(why), "{:?}: {err}", escaped(raw));
        }
        assert_eq!(check("ü-255.csv".as_bytes()), Ok("ü-255.csv"));
        assert_eq!(check("x".repeat(255).as_bytes()).map(str::len), Ok(255));
    }

    #[test]
    fn escaping_shows_every_byte_and_leaves_good_names_alone() {
        assert_eq!(escaped(b"bad\xffname.csv"), "bad\\xffname.csv");
        assert_eq!(escaped(b"a\nb\x1b.csv"), "a\\nb\\u{1b}.csv");
        assert_eq!(escaped("ünïcode.csv".as_bytes()), "ünïcode.csv");
        let escaped_long = escaped(&[0xff; 200]);
        assert_eq!(escaped_long.len(), 800);
        assert_eq!(component(&escaped_long).len(), 255);
        assert_eq!(component("é".repeat(200).as_str()).len(), 254, "never inside a character");
    }
}
