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
