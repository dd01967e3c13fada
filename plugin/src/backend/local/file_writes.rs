//! One line of a dir volume's write tracing, parsed (pure, table-tested):
//! which inode of the filesystem changed, and where (issue 11: PostgreSQL on
//! a `default` volume; the final round re-read every changed file whole).
//! The session and the per-cache bookkeeping are in `dir_writes`.
//!
//! The events, all carrying the filesystem's device and the inode:
//! - `ext4_da_write_end`, `ext4_write_end`, `ext4_journalled_write_end`: a
//!   buffered write's bytes are in the page cache (`pos`, `copied`). The end
//!   event, not the begin: a range drained before a scan is one whose bytes
//!   that scan will read (the block tracker's completion rule).
//! - `iomap_dio_rw_begin`: a direct write (`offset`, `length`, in hex). Its
//!   completion event does not give the range, so a direct range is
//!   recorded at its start and must stay pending for the scan after the one
//!   that first takes it (the data may land during that scan's read). Direct
//!   reads show up too (the flags do not tell them apart): read again, no
//!   harm.
//! - `ext4_fallocate_enter`, `ext4_punch_hole`, `ext4_zero_range`: a range
//!   allocated, punched or zeroed (`offset`, `len`).
//! - `ext4_truncate_enter`, `ext4_collapse_range`, `ext4_insert_range`: the
//!   file shrank or its data moved; `ext4_allocate_inode`, `ext4_free_inode`:
//!   the inode number now names another file. Each: read that file whole.
//! - `mm_filemap_fault`, `mm_filemap_map_pages`: pages of the file were
//!   mapped into a process. Writes through a shared mapping pass none of the
//!   write events, so a mapped file is read whole from then on.

use super::super::mountpoint::Device;

/// One traced change to a file of the filesystem (inode `ino`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileChange {
    /// Bytes `[start, end)` written. `early`: recorded at its start
    /// (direct I/O), so kept for one more scan.
    Range {
        ino: u64,
        start: u64,
        end: u64,
        early: bool,
    },
    /// Truncated, shifted, created or freed: read it whole once.
    Whole { ino: u64 },
    /// Memory-mapped: its writes are not seen; read it whole from now on.
    Mapped { ino: u64 },
}

/// The tracepoints a session enables, as `system/event`.
pub(crate) const EVENTS: [&str; 14] = [
    "ext4/ext4_da_write_end",
    "ext4/ext4_write_end",
    "ext4/ext4_journalled_write_end",
    "iomap/iomap_dio_rw_begin",
    "ext4/ext4_fallocate_enter",
    "ext4/ext4_punch_hole",
    "ext4/ext4_zero_range",
    "ext4/ext4_truncate_enter",
    "ext4/ext4_collapse_range",
    "ext4/ext4_insert_range",
    "ext4/ext4_allocate_inode",
    "ext4/ext4_free_inode",
    "filemap/mm_filemap_fault",
    "filemap/mm_filemap_map_pages",
];

/// The tracefs filter that keeps one filesystem's events of `event` (the
/// kernel's `dev_t` layout: major << 20 | minor; filemap's events name the
/// field `s_dev`).
pub(crate) fn filter(event: &str, dev: Device) -> String {
    let field = if event.starts_with("filemap/") {
        "s_dev"
    } else {
        "dev"
    };
    format!(
        "{field} == {}",
        (u64::from(dev.major) << 20) | u64::from(dev.minor)
    )
}

/// One line of `trace_pipe`, if it is a change to a file of `dev`.
pub(crate) fn parse_file_change(line: &str, dev: Device) -> Option<FileChange> {
    let (event, rest) = event_of(line)?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let value = |key: &str| -> Option<&str> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1).copied()
    };
    // `key=value` words (filemap's events).
    let field = |key: &str| -> Option<&str> {
        words
            .iter()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let (maj, min) = value("dev")
        .or_else(|| field("dev"))?
        .split_once([',', ':'])?;
    if maj.parse::<u32>().ok()? != dev.major || min.parse::<u32>().ok()? != dev.minor {
        return None;
    }
    let ino = || -> Option<u64> { value("ino")?.parse().ok() };
    let (ino, start, len, early) = match event {
        "ext4_da_write_end" | "ext4_write_end" | "ext4_journalled_write_end" => (
            ino()?,
            value("pos")?.parse::<u64>().ok()?,
            value("copied")?.parse::<u64>().ok()?,
            false,
        ),
        "iomap_dio_rw_begin" => (
            hex(value("ino")?)?,
            hex(value("offset")?)?,
            hex(value("length")?)?,
            true,
        ),
        "ext4_fallocate_enter" | "ext4_punch_hole" | "ext4_zero_range" => (
            ino()?,
            value("offset")?.parse::<u64>().ok()?,
            value("len")?.parse::<u64>().ok()?,
            false,
        ),
        "ext4_truncate_enter"
        | "ext4_collapse_range"
        | "ext4_insert_range"
        | "ext4_allocate_inode"
        | "ext4_free_inode" => return Some(FileChange::Whole { ino: ino()? }),
        "mm_filemap_fault" | "mm_filemap_map_pages" => {
            return Some(FileChange::Mapped {
                ino: u64::from_str_radix(field("ino")?, 16).ok()?,
            });
        }
        _ => return None,
    };
    if len == 0 {
        return None;
    }
    Some(FileChange::Range {
        ino,
        start,
        end: start.checked_add(len)?,
        early,
    })
}

/// `...] ..... 64907.304268: EVENT: REST` -> (EVENT, REST), for the events
/// of [`EVENTS`] only. Found by name, not by the first ": ": a task's name
/// (up to 15 bytes, any of them) comes first and may hold one. From the
/// right, without allocating: the drain parses every event of the
/// filesystem, on the database's CPU.
fn event_of(line: &str) -> Option<(&str, &str)> {
    line.rmatch_indices(": ").find_map(|(at, _)| {
        let (word, rest) = line[at + 2..].split_once(": ")?;
        EVENTS
            .iter()
            .any(|e| e.split_once('/').is_some_and(|(_, name)| name == word))
            .then_some((word, rest))
    })
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: Device = Device {
        major: 254,
        minor: 0,
    };

    /// Lines as this machine's kernel (6.18) printed them.
    #[test]
    fn parses_each_event_and_ignores_the_rest() {
        // (line, (ino, start, end, early)).
        type Row = (&'static str, Option<(u64, u64, u64, bool)>);
        let range = |c| match c {
            FileChange::Range {
                ino,
                start,
                end,
                early,
            } => (ino, start, end, early),
            other => panic!("not a range: {other:?}"),
        };
        let table: &[Row] = &[
            (
                "dd-10176 [001] ..... 64907.304270: ext4_da_write_end: dev 254,0 ino 2351106 pos 819200 len 8192 copied 8192",
                Some((2351106, 819200, 827392, false)),
            ),
            (
                "pg-1 [000] ..... 1.5: ext4_write_end: dev 254,0 ino 12 pos 0 len 4096 copied 100",
                Some((12, 0, 100, false)),
            ),
            (
                "dd-10177 [001] ..... 64907.305523: iomap_dio_rw_begin: dev 254:0 ino 0x23e002 size 0x400000 offset 0x258000 length 0x2000 done_before 0x0 flags DIRECT dio_flags  aio 0",
                Some((0x23e002, 0x258000, 0x25a000, true)),
            ),
            (
                "x-2 [000] ..... 2.0: ext4_punch_hole: dev 254,0 ino 7 offset 4096 len 8192 mode KEEP_SIZE|PUNCH_HOLE",
                Some((7, 4096, 12288, false)),
            ),
            (
                "x-2 [000] ..... 2.0: ext4_fallocate_enter: dev 254,0 ino 7 offset 0 len 1048576 mode KEEP_SIZE",
                Some((7, 0, 1048576, false)),
            ),
            // Another filesystem, nothing copied, a begin event, noise.
            (
                "dd-1 [001] ..... 1.0: ext4_da_write_end: dev 254,16 ino 5 pos 0 len 8 copied 8",
                None,
            ),
            (
                "dd-1 [001] ..... 1.0: ext4_da_write_end: dev 254,0 ino 5 pos 0 len 8 copied 0",
                None,
            ),
            (
                "dd-1 [001] ..... 1.0: ext4_da_write_begin: dev 254,0 ino 5 pos 0 len 8",
                None,
            ),
            ("CPU:1 [LOST 12 EVENTS]", None),
            // A task name with ": " in it.
            (
                "a: b-9 [000] ..... 3.0: ext4_da_write_end: dev 254,0 ino 5 pos 8 len 8 copied 8",
                Some((5, 8, 16, false)),
            ),
            ("", None),
            (
                "dd-1 [001] ..... 1.0: ext4_da_write_end: dev 254,0 ino x pos 0 len 8 copied 8",
                None,
            ),
        ];
        for (line, want) in table {
            let got = parse_file_change(line, DEV).map(range);
            assert_eq!(got, *want, "{line}");
        }
    }

    #[test]
    fn files_to_read_whole_and_mapped_files() {
        let table: &[(&str, Option<FileChange>)] = &[
            (
                "rm-5 [000] ..... 9.0: ext4_free_inode: dev 254,0 ino 77 mode 0100644 uid 0 gid 0 blocks 8",
                Some(FileChange::Whole { ino: 77 }),
            ),
            (
                "sh-5 [000] ..... 9.0: ext4_allocate_inode: dev 254,0 ino 78 dir 2 mode 0100644",
                Some(FileChange::Whole { ino: 78 }),
            ),
            (
                "pg-5 [001] ..... 9.0: ext4_truncate_enter: dev 254,0 ino 79 blocks 16",
                Some(FileChange::Whole { ino: 79 }),
            ),
            (
                "x-5 [001] ..... 9.0: ext4_collapse_range: dev 254,0 ino 80 offset 4096 len 4096",
                Some(FileChange::Whole { ino: 80 }),
            ),
            (
                "db-5 [001] ..... 9.0: mm_filemap_fault: dev=254:0 ino=23e002 ofs=8192",
                Some(FileChange::Mapped { ino: 0x23e002 }),
            ),
            (
                "db-5 [001] ..... 9.0: mm_filemap_map_pages: dev=254:0 ino=1f ofs=0-65535",
                Some(FileChange::Mapped { ino: 0x1f }),
            ),
            (
                "db-5 [001] ..... 9.0: mm_filemap_fault: dev=254:16 ino=1f ofs=0",
                None,
            ),
            (
                "db-5 [001] ..... 9.0: mm_filemap_fault: dev=254:0 ino=zz ofs=0",
                None,
            ),
        ];
        for (line, want) in table {
            assert_eq!(parse_file_change(line, DEV), *want, "{line}");
        }
    }

    #[test]
    fn the_filter_uses_the_kernels_device_layout_and_field_names() {
        assert_eq!(
            filter("ext4/ext4_da_write_end", DEV),
            format!("dev == {}", 254u64 << 20)
        );
        assert_eq!(
            filter("iomap/iomap_dio_rw_begin", Device { major: 7, minor: 3 }),
            format!("dev == {}", (7u64 << 20) | 3)
        );
        assert_eq!(
            filter("filemap/mm_filemap_fault", DEV),
            format!("s_dev == {}", 254u64 << 20)
        );
    }

    /// Every event named exists in this kernel's tracefs, with the field
    /// the filter names (a renamed event would silently track nothing).
    #[test]
    fn every_event_exists_with_its_filter_field() {
        let Ok(root) = super::super::tracefs::root() else {
            panic!("tracefs is needed (root, as CI is)");
        };
        for e in EVENTS {
            let format = std::fs::read_to_string(root.join("events").join(e).join("format"))
                .unwrap_or_else(|err| panic!("{e}: {err}"));
            let field = filter(e, DEV);
            let field = field.split_whitespace().next().unwrap();
            assert!(
                format.contains(&format!(" {field};")),
                "{e} has no field {field}"
            );
        }
    }
}
