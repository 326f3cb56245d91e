//! The lake's files: `<lake>/<topic>/date=YYYY-MM-DD/<topic>-p<partition>-o<first>-<last>-<k>of<n>.parquet`.
//!
//! One flush of a partition's messages (offsets `first` to `last`) makes `n` files, one per date its
//! rows fall on. Each is written under a hidden temporary name, synced, and renamed; offsets are
//! committed only after every rename. The files themselves say how far a partition got: after a
//! crash, `recover` finds the last flush of each partition, and if some of its `n` files are missing
//! (killed between renames) removes the others, so that flush is done again whole. Each message ends
//! up in exactly one file, whatever was committed to the broker.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow_array::RecordBatch;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// The file one flush writes for one date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub k: usize,
    pub n: usize,
}

impl FileName {
    pub fn render(&self, topic: &str) -> String {
        let FileName { partition, first, last, k, n } = self;
        format!("{topic}-p{partition}-o{first}-{last}-{k}of{n}.parquet")
    }

    /// The name's parts, if it is one of `topic`'s files.
    pub fn parse(topic: &str, name: &str) -> Option<FileName> {
        let rest = name.strip_prefix(topic)?.strip_prefix("-p")?.strip_suffix(".parquet")?;
        let (partition, rest) = rest.split_once("-o")?;
        let mut parts = rest.splitn(3, '-');
        let (first, last, kn) = (parts.next()?, parts.next()?, parts.next()?);
        let (k, n) = kn.split_once("of")?;
        Some(FileName {
            partition: partition.parse().ok()?,
            first: first.parse().ok()?,
            last: last.parse().ok()?,
            k: k.parse().ok()?,
            n: n.parse().ok()?,
        })
    }
}

/// `date=YYYY-MM-DD` for days since the epoch.
pub fn date_folder(days: i32) -> String {
    // 1970-01-01 is day 719,163 of the common era.
    let date = NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163)).unwrap_or_default();
    format!("date={}", date.format("%Y-%m-%d"))
}

/// Temporary files start with a dot: readers listing a folder skip them.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// The date folders of a topic.
fn date_folders(topic_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    match fs::read_dir(topic_dir) {
        Ok(entries) => {
            for e in entries {
                let e = e?;
                if e.file_type()?.is_dir() && e.file_name().to_string_lossy().starts_with("date=") {
                    found.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(found)
}

/// Where each partition of `topic` goes on from, by its files: the offset after its last whole
/// flush. Removes what a crash left: temporary files, and the files of a flush not all renamed.
pub fn recover(topic_dir: &Path, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let mut flushes: BTreeMap<(i32, i64, i64), Vec<(FileName, PathBuf)>> = BTreeMap::new();
    for dir in date_folders(topic_dir).with_context(|| format!("listing {}", topic_dir.display()))? {
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_temporary(&name) {
                fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            } else if let Some(f) = FileName::parse(topic, &name) {
                flushes.entry((f.partition, f.last, f.first)).or_default().push((f, e.path()));
            }
        }
    }
    let mut next = HashMap::new();
    // By partition, the flush with the highest `last` comes last.
    let mut last_of: HashMap<i32, Vec<(FileName, PathBuf)>> = HashMap::new();
    for ((partition, ..), files) in flushes {
        last_of.insert(partition, files);
    }
    for (partition, files) in last_of {
        let (first, last, n) = (files[0].0.first, files[0].0.last, files[0].0.n);
        let mut ks: Vec<usize> = files.iter().map(|(f, _)| f.k).collect();
        ks.sort_unstable();
        ks.dedup();
        if ks.len() == n {
            next.insert(partition, last + 1);
            continue;
        }
        for (_, path) in &files {
            eprintln!("parquet-lake: removing {} (its flush was cut short; it is written again)", path.display());
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
        next.insert(partition, first);
    }
    Ok(next)
}

/// One date's file of a partition's flush while it is written: rows go in as they are read (Parquet
/// encodes them then), under a hidden temporary name until `finish_flush` renames it.
pub struct Open {
    days: i32,
    temporary: PathBuf,
    file: fs::File,
    writer: ArrowWriter<fs::File>,
}

impl Open {
    /// Starts the file of `days` for the flush of `partition` starting at `first`.
    pub fn create(
        topic_dir: &Path,
        topic: &str,
        partition: i32,
        first: i64,
        days: i32,
        rows: &RecordBatch,
    ) -> anyhow::Result<Open> {
        let dir = topic_dir.join(date_folder(days));
        if !dir.is_dir() {
            fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
            sync_dir(topic_dir)?;
        }
        let temporary = dir.join(format!(".{topic}-p{partition}-o{first}-d{days}.tmp"));
        let start = || -> anyhow::Result<(fs::File, ArrowWriter<fs::File>)> {
            let file = fs::File::create(&temporary)?;
            let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let writer = ArrowWriter::try_new(file.try_clone()?, rows.schema(), Some(props))?;
            Ok((file, writer))
        };
        let (file, writer) = start().with_context(|| format!("writing {}", temporary.display()))?;
        Ok(Open { days, temporary, file, writer })
    }

    pub fn write(&mut self, rows: &RecordBatch) -> anyhow::Result<()> {
        self.writer.write(rows).with_context(|| format!("writing {}", self.temporary.display()))
    }
}

/// Ends one flush of a partition: closes and syncs every date's file, then renames each to its name
/// (`k` of `n` by date); unless the files together are larger than `room` (bytes the lake may still
/// take): then they are removed and nothing is renamed. Returns the files' size.
pub fn finish_flush(
    topic: &str,
    partition: i32,
    (first, last): (i64, i64),
    mut open: Vec<Open>,
    room: u64,
) -> anyhow::Result<Result<u64, u64>> {
    open.sort_by_key(|o| o.days);
    let n = open.len();
    let mut written = Vec::with_capacity(n);
    let mut size = 0;
    for (k, o) in open.into_iter().enumerate() {
        let close = || -> anyhow::Result<u64> {
            o.writer.close()?;
            o.file.sync_all()?;
            Ok(o.file.metadata()?.len())
        };
        size += close().with_context(|| format!("writing {}", o.temporary.display()))?;
        let name = FileName { partition, first, last, k: k + 1, n }.render(topic);
        let path = o.temporary.with_file_name(name);
        written.push((o.temporary, path));
    }
    if size > room {
        for (temporary, _) in &written {
            fs::remove_file(temporary).with_context(|| format!("removing {}", temporary.display()))?;
        }
        return Ok(Err(size));
    }
    for (temporary, path) in written {
        fs::rename(&temporary, &path).with_context(|| format!("renaming {}", temporary.display()))?;
        sync_dir(path.parent().expect("a file in a folder"))?;
    }
    Ok(Ok(size))
}

/// What the finished files under a topic's folder take, in bytes (links and other names not counted).
pub fn size_of(topic_dir: &Path, topic: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for dir in date_folders(topic_dir).with_context(|| format!("listing {}", topic_dir.display()))? {
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if FileName::parse(topic, &name).is_some() && e.file_type()?.is_file() {
                total += e.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file in a folder")?;
    fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let temporary = dir.join(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&temporary)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_topic_partition_offsets_and_flush_share() {
        let f = FileName { partition: 2, first: 100, last: 199, k: 1, n: 3 };
        let name = f.render("cdc.public.orders-x");
        assert_eq!(name, "cdc.public.orders-x-p2-o100-199-1of3.parquet");
        assert_eq!(FileName::parse("cdc.public.orders-x", &name), Some(f));
        assert_eq!(FileName::parse("cdc.public.orders", &name), None, "another topic's file is not ours");
        assert_eq!(FileName::parse("t", "t-p1-o5-4-1of1.parquet.tmp"), None);
        assert_eq!(date_folder(0), "date=1970-01-01");
        assert_eq!(date_folder(20_423), "date=2025-12-01");
    }

    #[test]
    fn a_flush_past_its_room_leaves_nothing_behind() {
        use super::super::columns::{Column, Columns, Kind, Rows};
        let dir = tempfile::tempdir().unwrap();
        let columns = Columns(vec![Column { name: "id".into(), kind: Kind::Int64 }]);
        let batch = || {
            let mut rows = Rows::new(&columns);
            let row = serde_json::json!({"id": 1});
            rows.push(&columns, row.as_object().unwrap()).unwrap();
            let rows = rows.finish().unwrap();
            let mut open = Open::create(dir.path(), "t", 0, 0, 20_423, &rows).unwrap();
            open.write(&rows).unwrap();
            vec![open]
        };
        let refused = finish_flush("t", 0, (0, 0), batch(), 10).unwrap().unwrap_err();
        assert!(refused > 10);
        assert_eq!(size_of(dir.path(), "t").unwrap(), 0);
        assert_eq!(fs::read_dir(dir.path().join("date=2025-12-01")).unwrap().count(), 0, "no temporary file is left");
        let size = finish_flush("t", 0, (0, 0), batch(), refused).unwrap().unwrap();
        assert_eq!((size, size_of(dir.path(), "t").unwrap()), (refused, refused));
    }

    #[test]
    fn a_flush_cut_short_is_removed_and_done_again() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |date: &str, name: &str| {
            fs::create_dir_all(dir.path().join(date)).unwrap();
            fs::write(dir.path().join(date).join(name), b"x").unwrap();
        };
        // Partition 0: two whole flushes. Partition 1: its second flush has one of two files.
        touch("date=2026-12-01", "t-p0-o0-9-1of1.parquet");
        touch("date=2026-12-01", "t-p0-o10-19-1of2.parquet");
        touch("date=2026-12-02", "t-p0-o10-19-2of2.parquet");
        touch("date=2026-12-01", "t-p1-o0-4-1of1.parquet");
        touch("date=2026-12-02", "t-p1-o5-9-2of2.parquet");
        touch("date=2026-12-02", ".t-p1-o5-9-1of2.parquet.tmp");
        touch("date=2026-12-02", "other-p1-o0-99-1of1.parquet");
        let next = recover(dir.path(), "t").unwrap();
        assert_eq!(next, HashMap::from([(0, 20), (1, 5)]));
        let left: Vec<String> = fs::read_dir(dir.path().join("date=2026-12-02"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(left, ["other-p1-o0-99-1of1.parquet", "t-p0-o10-19-2of2.parquet"]);
    }
}
