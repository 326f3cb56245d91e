//! A log that keeps the first and the last part of what a program prints and counts what it dropped
//! in between, so a program printing gigabytes costs a bounded amount of memory and storage and the
//! beginning (usually the cause) and the end (usually the outcome) both survive.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct BoundedLog {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    half: usize,
    dropped: u64,
}

impl BoundedLog {
    pub fn new(limit: usize) -> Self {
        let half = (limit / 2).max(1);
        BoundedLog { head: Vec::with_capacity(half.min(64 << 10)), tail: VecDeque::new(), half, dropped: 0 }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.head.len() < self.half {
            let take = bytes.len().min(self.half - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if bytes.len() >= self.half {
            self.dropped += (self.tail.len() + bytes.len() - self.half) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.half..]);
            return;
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.half);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(bytes);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept text, with a marker where bytes were dropped.
    pub fn render(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            out.push_str(&format!("\n[... {} bytes dropped ...]\n", self.dropped));
        }
        let (a, b) = self.tail.as_slices();
        out.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        // PostgreSQL text cannot hold NUL bytes, and a program may print anything.
        out.replace('\0', "\u{FFFD}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_is_kept_whole() {
        let mut log = BoundedLog::new(100);
        log.push(b"hello ");
        log.push(b"world");
        assert_eq!(log.render(), "hello world");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn large_output_keeps_head_and_tail() {
        let mut log = BoundedLog::new(20);
        log.push(b"0123456789");
        for _ in 0..1000 {
            log.push(b"xxxxxxx");
        }
        log.push(b"the end!!!");
        let text = log.render();
        assert!(text.starts_with("0123456789"), "{text}");
        assert!(text.ends_with("the end!!!"), "{text}");
        assert_eq!(log.dropped(), 7000);
        assert!(text.contains("[... 7000 bytes dropped ...]"));
    }

    #[test]
    fn one_huge_chunk_is_bounded() {
        let mut log = BoundedLog::new(10);
        log.push(&vec![b'a'; 1 << 20]);
        assert_eq!(log.render().len(), 10 + "\n[... 1048566 bytes dropped ...]\n".len());
    }
}

/// A long-running program's log on disk, bounded: when the file reaches `limit` bytes it becomes
/// `<file>.1` (replacing the previous one) and a new file starts, so at most twice `limit` is kept
/// and the newest output is always there.
pub struct RotatingLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    written: u64,
    limit: u64,
}

impl RotatingLog {
    pub fn open(path: &std::path::Path, limit: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog { path: path.to_owned(), file, written, limit: limit.max(1) })
    }

    /// Appends `bytes`; errors (a full disk) lose log lines, never the program's run.
    pub fn push(&mut self, bytes: &[u8]) {
        use std::io::Write;
        if self.written + bytes.len() as u64 > self.limit && self.written > 0 {
            let _ = std::fs::rename(&self.path, rotated(&self.path));
            match std::fs::OpenOptions::new().create(true).append(true).truncate(false).open(&self.path) {
                Ok(f) => {
                    self.file = f;
                    self.written = 0;
                }
                Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "rotating a log failed"),
            }
        }
        if self.file.write_all(bytes).is_ok() {
            self.written += bytes.len() as u64;
        }
    }

    /// The last `max` bytes of the log (the rotated file first), as text.
    pub fn tail(path: &std::path::Path, max: u64) -> std::io::Result<String> {
        let mut out = Vec::new();
        for p in [rotated(path), path.to_owned()] {
            match std::fs::read(&p) {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let skip = out.len().saturating_sub(max as usize);
        Ok(String::from_utf8_lossy(&out[skip..]).into_owned())
    }
}

fn rotated(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    name.into()
}

#[cfg(test)]
mod rotating_tests {
    use super::RotatingLog;

    #[test]
    fn a_log_keeps_at_most_two_files_and_always_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = RotatingLog::open(&path, 100).unwrap();
        for i in 0..100 {
            log.push(format!("line {i:03}\n").as_bytes());
        }
        let kept = std::fs::metadata(&path).unwrap().len() + std::fs::metadata(dir.path().join("log.1")).unwrap().len();
        assert!(kept <= 200, "{kept} bytes kept");
        let tail = RotatingLog::tail(&path, 1 << 20).unwrap();
        assert!(tail.ends_with("line 099\n"), "{tail}");
        assert!(!tail.contains("line 000"), "the oldest lines are gone: {tail}");
        assert_eq!(RotatingLog::tail(&path, 9).unwrap(), "line 099\n");
    }
}
