//! The container's memory cgroup: its limit (which sizes the Bazel server's Java heap) and its
//! OOM-kill counter (which tells an OOM kill from any other SIGKILL).
//!
//! Both cgroup versions, read under one root (`CGROUP_ROOT`, default `/sys/fs/cgroup`; a
//! container sees its own cgroup there):
//!
//! | | limit | OOM kills |
//! |---|---|---|
//! | v2 | `<root>/memory.max` (`max` = unlimited) | `<root>/memory.events`, line `oom_kill N` |
//! | v1 | `<root>/memory/memory.limit_in_bytes` (a huge value = unlimited) | `<root>/memory/memory.oom_control`, line `oom_kill N` |
//!
//! v2 wins when its file exists (a hybrid host has both).
//!
//! The heap decision ([`heap_for`]) is pure: 75 % of the limit, at least [`MIN_HEAP_MIB`].

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where the cgroup filesystem is mounted in a container.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v2: the limit, and the events file with `oom_kill`.
pub const V2_MAX: &str = "memory.max";
pub const V2_EVENTS: &str = "memory.events";
/// v1: the limit, and the control file with `oom_kill`.
pub const V1_LIMIT: &str = "memory/memory.limit_in_bytes";
pub const V1_OOM_CONTROL: &str = "memory/memory.oom_control";

/// A v1 limit at or above this means "no limit": the kernel reports unlimited as
/// `LONG_MAX` rounded down to a page (9223372036854771712), and no machine has 1 EiB.
pub const V1_UNLIMITED_FROM: u64 = 1 << 60;

/// The share of the container's memory the Java heap may take, in percent.
///
/// The JVM's footprint is the heap plus native memory the heap limit does not cover:
/// metaspace and code cache (Bazel loads many classes), thread stacks (one per Skyframe and
/// gRPC thread), direct buffers, the GC's own structures. The build actions Bazel spawns (the
/// compilers, linkers and tests) run in the same container and count against the same limit.
/// A quarter left for all of that is the usual rule for a JVM that is the container's main
/// process; the JVM's own container default (`MaxRAMPercentage=25`) would waste most of the
/// pod on a server whose heap is its working set.
pub const HEAP_PERCENT: u64 = 75;

/// The smallest heap ever passed, in MiB. Below this the limit is too small for Bazel anyway
/// (a trivial build needs about 32 MiB of heap, a real one hundreds); a floor keeps the flag
/// valid (the JVM refuses a heap of a few MiB outright) so the server starts and fails the
/// way an undersized pod should: Bazel's own out-of-memory exit, or an OOM kill, both of
/// which the supervisor names. A warning is logged below [`SMALL_LIMIT_MIB`].
pub const MIN_HEAP_MIB: u64 = 64;

/// A container limit below this gets a warning: Bazel needs more for any real build.
pub const SMALL_LIMIT_MIB: u64 = 512;

const MIB: u64 = 1024 * 1024;

/// What the memory cgroup says about the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MemoryLimit {
    /// A limit of this many bytes, read from `source`.
    Limited { bytes: u64, source: PathBuf },
    /// The cgroup says "no limit".
    Unlimited { source: PathBuf },
    /// Neither version's file could be read or parsed (not in a container, no memory
    /// controller): the JVM keeps its own default.
    Unknown { reason: String },
}

/// Parses v2 `memory.max`: `max` or a byte count. `Some(None)` = unlimited. Pure.
pub fn parse_v2_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        n => n.parse::<u64>().ok().map(Some),
    }
}

/// Parses v1 `memory.limit_in_bytes`; a value from [`V1_UNLIMITED_FROM`] up is unlimited.
/// `Some(None)` = unlimited. Pure.
pub fn parse_v1_limit(text: &str) -> Option<Option<u64>> {
    let n = text.trim().parse::<u64>().ok()?;
    Some((n < V1_UNLIMITED_FROM).then_some(n))
}

/// The `oom_kill N` line of v2 `memory.events` or v1 `memory.oom_control`. Pure.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_ascii_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("oom_kill"), Some(n), None) => n.parse().ok(),
            _ => None,
        }
    })
}

/// A parser of one version's limit file: `Some(None)` = unlimited, None = unparsable.
type LimitParser = fn(&str) -> Option<Option<u64>>;

/// Reads the memory limit under `root` (v2 first, then v1). Reads only.
pub fn read_memory_limit(root: &Path) -> MemoryLimit {
    let attempts: [(&str, LimitParser); 2] = [(V2_MAX, parse_v2_max), (V1_LIMIT, parse_v1_limit)];
    let mut problems = Vec::new();
    for (rel, parse) in attempts {
        let source = root.join(rel);
        match std::fs::read_to_string(&source) {
            Ok(text) => match parse(&text) {
                Some(Some(bytes)) => return MemoryLimit::Limited { bytes, source },
                Some(None) => return MemoryLimit::Unlimited { source },
                None => problems.push(format!(
                    "{}: unparsable {:?}",
                    source.display(),
                    text.trim()
                )),
            },
            Err(e) => problems.push(format!("{}: {e}", source.display())),
        }
    }
    MemoryLimit::Unknown {
        reason: problems.join("; "),
    }
}

/// The OOM-kill counter of the cgroup under `root` (v2 first, then v1); None when neither
/// file can be read.
pub fn read_oom_kills(root: &Path) -> Option<u64> {
    [V2_EVENTS, V1_OOM_CONTROL].iter().find_map(|rel| {
        std::fs::read_to_string(root.join(rel))
            .ok()
            .and_then(|t| parse_oom_kill(&t))
    })
}

/// The Java heap the Bazel server gets, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeapChoice {
    /// `-Xmx<N>m`; None: the JVM's own default.
    pub xmx_mib: Option<u64>,
    /// One line for the plan and the log.
    pub reason: String,
    /// Set when the limit is too small for Bazel to be useful.
    pub warning: Option<String>,
}

impl HeapChoice {
    /// The startup option for the Bazel client, if any.
    pub fn startup_option(&self) -> Option<String> {
        self.xmx_mib.map(|n| format!("--host_jvm_args=-Xmx{n}m"))
    }
}

/// The heap for a memory limit: [`HEAP_PERCENT`] of it, at least [`MIN_HEAP_MIB`]; no flag
/// when there is no (known) limit. Pure.
pub fn heap_for(limit: &MemoryLimit) -> HeapChoice {
    match limit {
        MemoryLimit::Limited { bytes, source } => {
            let limit_mib = bytes / MIB;
            let share =
                (u128::from(*bytes) * u128::from(HEAP_PERCENT) / 100 / u128::from(MIB)) as u64;
            let xmx = share.max(MIN_HEAP_MIB);
            let reason = if xmx == share {
                format!(
                    "{HEAP_PERCENT}% of the container's memory limit of {limit_mib} MiB ({})",
                    source.display()
                )
            } else {
                format!(
                    "the floor of {MIN_HEAP_MIB} MiB: {HEAP_PERCENT}% of the container's memory \
                     limit of {limit_mib} MiB ({}) is less",
                    source.display()
                )
            };
            let warning = (limit_mib < SMALL_LIMIT_MIB).then(|| {
                format!(
                    "the container's memory limit of {limit_mib} MiB is below {SMALL_LIMIT_MIB} MiB: \
                     expect Bazel to run out of memory"
                )
            });
            HeapChoice {
                xmx_mib: Some(xmx),
                reason,
                warning,
            }
        }
        MemoryLimit::Unlimited { source } => HeapChoice {
            xmx_mib: None,
            reason: format!(
                "the JVM's default: no container memory limit ({} says unlimited)",
                source.display()
            ),
            warning: None,
        },
        MemoryLimit::Unknown { reason } => HeapChoice {
            xmx_mib: None,
            reason: format!("the JVM's default: no memory cgroup found ({reason})"),
            warning: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(parse_v2_max("max\n"), Some(None));
        assert_eq!(parse_v2_max("1073741824\n"), Some(Some(1 << 30)));
        assert_eq!(parse_v2_max("lots"), None);
        assert_eq!(parse_v1_limit("9223372036854771712\n"), Some(None));
        assert_eq!(parse_v1_limit("536870912"), Some(Some(512 << 20)));
        assert_eq!(parse_v1_limit("max"), None);
    }

    #[test]
    fn oom_kill_lines() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_oom_kill(v1), Some(7));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(parse_oom_kill(""), None);
    }

    fn limited(mib: u64) -> MemoryLimit {
        MemoryLimit::Limited {
            bytes: mib * MIB,
            source: PathBuf::from("/sys/fs/cgroup/memory.max"),
        }
    }

    #[test]
    fn heap_table() {
        // (limit MiB, -Xmx MiB, warned)
        let cases = [
            (8192, 6144, false),
            (4096, 3072, false),
            (1024, 768, false),
            (512, 384, false),
            (300, 225, true),
            (100, 75, true),
            (85, 64, true),
            (64, 64, true),
            (16, 64, true),
            (0, 64, true),
        ];
        for (limit, xmx, warned) in cases {
            let h = heap_for(&limited(limit));
            assert_eq!(h.xmx_mib, Some(xmx), "limit {limit} MiB");
            assert_eq!(h.warning.is_some(), warned, "limit {limit} MiB");
            assert_eq!(
                h.startup_option(),
                Some(format!("--host_jvm_args=-Xmx{xmx}m"))
            );
            assert!(h.reason.contains(&format!("{limit} MiB")), "{}", h.reason);
        }
        // Not a whole MiB: rounded down, never above the share.
        let odd = heap_for(&MemoryLimit::Limited {
            bytes: 1000 * 1000 * 1000,
            source: PathBuf::from("x"),
        });
        assert_eq!(odd.xmx_mib, Some(715));
        assert!(heap_for(&limited(16)).reason.contains("floor"));
    }

    #[test]
    fn no_limit_no_flag() {
        for l in [
            MemoryLimit::Unlimited {
                source: PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
            },
            MemoryLimit::Unknown {
                reason: "no such file".into(),
            },
        ] {
            let h = heap_for(&l);
            assert_eq!((h.xmx_mib, h.startup_option()), (None, None));
            assert!(h.reason.starts_with("the JVM's default"), "{}", h.reason);
        }
    }

    #[test]
    fn reads_both_versions() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            read_memory_limit(t.path()),
            MemoryLimit::Unknown { .. }
        ));
        assert_eq!(read_oom_kills(t.path()), None);
        // v1 layout.
        std::fs::create_dir(t.path().join("memory")).expect("mkdir");
        std::fs::write(t.path().join(V1_LIMIT), "9223372036854771712\n").expect("write");
        std::fs::write(
            t.path().join(V1_OOM_CONTROL),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
        )
        .expect("write");
        assert!(matches!(
            read_memory_limit(t.path()),
            MemoryLimit::Unlimited { .. }
        ));
        assert_eq!(read_oom_kills(t.path()), Some(4));
        // v2 wins when present.
        std::fs::write(t.path().join(V2_MAX), "2147483648\n").expect("write");
        std::fs::write(t.path().join(V2_EVENTS), "oom 1\noom_kill 1\n").expect("write");
        assert_eq!(
            read_memory_limit(t.path()),
            MemoryLimit::Limited {
                bytes: 2 << 30,
                source: t.path().join(V2_MAX)
            }
        );
        assert_eq!(read_oom_kills(t.path()), Some(1));
        // Garbage is reported, not guessed at.
        std::fs::write(t.path().join(V2_MAX), "lots\n").expect("write");
        std::fs::remove_file(t.path().join(V1_LIMIT)).expect("rm");
        match read_memory_limit(t.path()) {
            MemoryLimit::Unknown { reason } => assert!(reason.contains("unparsable"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
