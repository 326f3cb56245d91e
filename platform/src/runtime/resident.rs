//! Resident memory of a process group, read from /proc, for the memory limit of long-running
//! programs.
//!
//! Why not RLIMIT_AS for them: the address-space limit counts what a program reserves, not what it
//! uses. A multithreaded program reserves far more than it touches (glibc gives each thread that
//! allocates its own 64 MiB heap arena, each thread has its stack), so the example stream app
//! reserved 477 MiB while using 8 MiB, and under load a new arena passed a 512 MiB limit: an
//! allocation failed inside librdkafka and the program aborted. Resident memory is what the
//! agreement means. Without cgroups to enforce it, the platform samples it (so a program may pass the
//! limit for up to one sampling interval before it is killed); the container runtime has the
//! kernel enforce it.

use std::time::Duration;

use super::process::proc_stat;
use crate::units::ByteSize;

/// How often the group's resident memory is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Every this many samples the group's members are looked for again (a full scan of /proc).
const RESCAN_EVERY: u32 = 8;

/// Fields of /proc/PID/stat (proc(5) numbers them from 1; `proc_stat` hands them over from field 3).
const PGRP: usize = 5 - 3;
const RSS_PAGES: usize = 24 - 3;

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// The process group and resident size (bytes) of a process, or None if it is gone.
fn stat(pid: i32, page: u64) -> Option<(i32, u64)> {
    proc_stat(pid as u32, |fields| {
        let pgrp = fields.get(PGRP)?.parse().ok()?;
        let pages: u64 = fields.get(RSS_PAGES)?.parse().ok()?;
        Some((pgrp, pages * page))
    })
}

/// Follows the resident memory of the processes in one process group.
pub struct GroupMemory {
    pgid: i32,
    members: Vec<i32>,
    samples: u32,
    page: u64,
}

impl GroupMemory {
    pub fn new(pgid: i32) -> Self {
        GroupMemory { pgid, members: vec![pgid], samples: 0, page: page_size() }
    }

    fn rescan(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        self.members = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| stat(*pid, self.page).is_some_and(|(pgrp, _)| pgrp == self.pgid))
            .collect();
    }

    /// The group's resident memory now, in bytes.
    pub fn sample(&mut self) -> u64 {
        if self.samples.is_multiple_of(RESCAN_EVERY) {
            self.rescan();
        }
        self.samples = self.samples.wrapping_add(1);
        self.members
            .iter()
            .filter_map(|pid| stat(*pid, self.page))
            .filter(|(pgrp, _)| *pgrp == self.pgid)
            .map(|(_, rss)| rss)
            .sum()
    }

    /// Returns once the group's resident memory is over `limit`, with what it was.
    pub async fn over(mut self, limit: ByteSize) -> ByteSize {
        loop {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let now = self.sample();
            if now > limit.0 {
                return ByteSize(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platforms_own_group_has_its_resident_memory() {
        // SAFETY: getpgrp cannot fail.
        let pgid = unsafe { libc::getpgrp() };
        let me = std::process::id() as i32;
        let mut g = GroupMemory::new(pgid);
        let total = g.sample();
        assert!(g.members.contains(&me), "{:?} lacks {me}", g.members);
        let own = stat(me, page_size()).unwrap().1;
        assert!(own > 1 << 20 && total >= own, "own {own}, group {total}");
        assert_eq!(GroupMemory::new(i32::MAX - 1).sample(), 0, "no such group");
    }
}
