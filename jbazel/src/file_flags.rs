//! Options that name a file the server writes or reads, rewritten so the file is where the
//! user named it on the desktop (issue: IDEs pass `--build_event_json_file=/tmp/...`).
//!
//! - A path in the workspace (or the filestore mirror) becomes its pod path
//!   (`/work/src/...`, `/work/out/...`): the server writes it and the desktop sees it.
//! - An output file anywhere else on the desktop is written by the server into the
//!   output base (`/work/out/jbazel/files/<pid>-<n>-<name>`) and copied to the desktop
//!   path after the command, whatever its outcome ([`deliver`]).
//! - `--override_repository=NAME=PATH` with PATH outside the workspace is refused with a
//!   clear error: the pod cannot see the desktop's other directories.
//!
//! Relative paths are taken from the desktop working directory, as Bazel's client does.
//! Options after `--` are the target's arguments and are left alone. Pure but for
//! [`deliver`].

use std::path::{Component, Path, PathBuf};

use crate::paths::{PathMap, Rewriter, POD_OUT};

/// Output-file options: the server writes the file.
pub const OUTPUT_FILE_FLAGS: &[&str] = &[
    "build_event_json_file",
    "build_event_binary_file",
    "build_event_text_file",
    "profile",
    "execution_log_json_file",
    "execution_log_binary_file",
];

/// Output files in a text format whose pod paths are translated when delivered (IDEs find
/// outputs through the BEP's `file:///work/out/...` URIs).
const TEXT_FILE_FLAGS: &[&str] = &[
    "build_event_json_file",
    "build_event_text_file",
    "execution_log_json_file",
];

/// Where the server writes files bound for elsewhere on the desktop (under the output base).
pub const FILES_DIR: &str = "jbazel/files";

/// A file to copy from the mirror to the desktop once the command is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The file as the desktop sees it in the mirror (`R/U/H/out/jbazel/files/...`).
    pub from: PathBuf,
    /// Where the user asked for it.
    pub to: PathBuf,
    /// Text whose `/work/...` paths become desktop paths on the way.
    pub translate: bool,
}

/// The user's arguments as the server must see them, and the files to deliver after.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewritten {
    pub args: Vec<String>,
    pub deliveries: Vec<Delivery>,
}

/// A file option the platform cannot honour; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileFlagError {
    #[error("--override_repository={name}={}: the directory is outside the workspace {}, and the Bazel server in your pod sees only the workspace; move or copy it inside the workspace", path.display(), root.display())]
    OverrideOutside {
        name: String,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("--override_repository={0}: expected NAME=PATH")]
    OverrideSyntax(String),
}

/// `path` made absolute against `cwd`, with `.` and `..` resolved lexically.
fn absolute(cwd: &Path, path: &str) -> PathBuf {
    let joined = cwd.join(path);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The pod path of a desktop path, when the pod can see it (workspace or mirror).
fn pod_path(map: &PathMap, path: &Path) -> Option<String> {
    let name = map.pod_name(path);
    name.starts_with("/work/").then_some(name)
}

/// Splits `--name=value` / `--name value`; returns (name, value, consumed next arg).
fn option<'a>(arg: &'a str, next: Option<&'a String>) -> Option<(&'a str, Option<&'a str>, bool)> {
    let body = arg.strip_prefix("--")?;
    match body.split_once('=') {
        Some((name, value)) => Some((name, Some(value), false)),
        None => Some((body, next.map(String::as_str), next.is_some())),
    }
}

/// Rewrites the file options of `args` (the user's arguments after the command).
pub fn rewrite(args: &[String], cwd: &Path, map: &PathMap) -> Result<Rewritten, FileFlagError> {
    let mut out = Rewritten::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            out.args.extend(args[i..].iter().cloned());
            break;
        }
        let parsed = option(arg, args.get(i + 1));
        match parsed {
            Some((name, Some(value), consumed)) if OUTPUT_FILE_FLAGS.contains(&name) => {
                let desktop = absolute(cwd, value);
                let pod = match pod_path(map, &desktop) {
                    Some(pod) => pod,
                    None if value.is_empty() => String::new(),
                    None => {
                        let file = desktop
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "file".into());
                        let staged = format!(
                            "{FILES_DIR}/{}-{}-{file}",
                            std::process::id(),
                            out.deliveries.len()
                        );
                        out.deliveries.push(Delivery {
                            from: map.mirror_out.join(&staged),
                            to: desktop,
                            translate: TEXT_FILE_FLAGS.contains(&name),
                        });
                        format!("{POD_OUT}/{staged}")
                    }
                };
                out.args.push(format!("--{name}={pod}"));
                i += 1 + usize::from(consumed);
            }
            Some(("override_repository", Some(value), consumed)) => {
                let (repo, path) = value
                    .split_once('=')
                    .ok_or_else(|| FileFlagError::OverrideSyntax(value.to_string()))?;
                let pod = if path.starts_with("%workspace%") {
                    path.to_string()
                } else {
                    let desktop = absolute(cwd, path);
                    pod_path(map, &desktop).ok_or_else(|| FileFlagError::OverrideOutside {
                        name: repo.to_string(),
                        path: desktop.clone(),
                        root: map.desktop_root.clone(),
                    })?
                };
                out.args.push(format!("--override_repository={repo}={pod}"));
                i += 1 + usize::from(consumed);
            }
            _ => {
                out.args.push(arg.clone());
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Errors delivering a file; each names both ends.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the server did not write {} (for {})", from.display(), to.display())]
    Missing { from: PathBuf, to: PathBuf },
    #[error("{} is not a regular file; not copied to {}", from.display(), to.display())]
    NotAFile { from: PathBuf, to: PathBuf },
    #[error("cannot copy {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A path as a `file://` URI path: bytes outside RFC 3986's unreserved set and `/` are
/// percent-encoded (Bazel writes `file:///a/my%20repo`).
fn uri_path(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Pod paths in text as the desktop must read them: `file:///work/...` URIs first, then
/// plain paths.
pub fn translate_text(bytes: &[u8], map: &PathMap) -> Vec<u8> {
    // Rewriter patterns start with `/`: match `///work/..` after `file:`.
    let uri = |prefix: &str, desktop: &Path| {
        let mut to = b"//".to_vec();
        to.extend(uri_path(desktop));
        (format!("//{prefix}").into_bytes(), to)
    };
    let uris = Rewriter::new(vec![
        uri(crate::paths::POD_SRC, &map.desktop_root),
        uri(POD_OUT, &map.mirror_out),
    ]);
    map.to_desktop().rewrite(&uris.rewrite(bytes))
}

/// Copies one staged file to the desktop path (text formats translated, see
/// [`translate_text`]) and removes the staged copy. The pod wrote the staged file: only a
/// regular file (not a symlink) is copied.
pub fn deliver(d: &Delivery, map: &PathMap) -> Result<(), DeliveryError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let (from, to) = (d.from.clone(), d.to.clone());
    // Opened without following a last-component symlink and without blocking on a FIFO,
    // then checked on the open file: the pod cannot swap the file between check and read.
    let mut src = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&d.from)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(DeliveryError::NotAFile { from, to })
        }
        Err(_) => return Err(DeliveryError::Missing { from, to }),
    };
    if !src.metadata().is_ok_and(|m| m.file_type().is_file()) {
        return Err(DeliveryError::NotAFile { from, to });
    }
    let copied = (|| -> std::io::Result<()> {
        let mut dst = std::fs::File::create(&d.to)?;
        if d.translate {
            let mut bytes = Vec::new();
            src.read_to_end(&mut bytes)?;
            dst.write_all(&translate_text(&bytes, map))
        } else {
            std::io::copy(&mut src, &mut dst).map(drop)
        }
    })();
    copied.map_err(|source| DeliveryError::Copy { from, to, source })?;
    let _ = std::fs::remove_file(&d.from);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef";

    fn map() -> PathMap {
        PathMap::new(
            Path::new("/home/a/my repo"),
            Path::new("/fs"),
            "alice",
            HASH,
        )
    }

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn staged(n: usize, file: &str) -> String {
        format!("{POD_OUT}/{FILES_DIR}/{}-{n}-{file}", std::process::id())
    }

    #[test]
    fn every_output_flag_in_both_spellings() {
        let cwd = Path::new("/home/a/my repo/lib");
        for flag in OUTPUT_FILE_FLAGS {
            // Inside the workspace: the pod path, nothing to deliver.
            let r = rewrite(
                &v(&["//...", &format!("--{flag}=out/bep.json")]),
                cwd,
                &map(),
            )
            .expect("rewrite");
            assert_eq!(
                r.args,
                v(&["//...", &format!("--{flag}=/work/src/lib/out/bep.json")]),
                "{flag}"
            );
            assert!(r.deliveries.is_empty());
            // Elsewhere, spelled as two arguments: staged in the output base, delivered after.
            let r = rewrite(
                &v(&[&format!("--{flag}"), "/tmp/intellij-bep-123"]),
                cwd,
                &map(),
            )
            .expect("rewrite");
            assert_eq!(
                r.args,
                vec![format!("--{flag}={}", staged(0, "intellij-bep-123"))]
            );
            assert_eq!(
                r.deliveries,
                vec![Delivery {
                    from: PathBuf::from(format!(
                        "/fs/alice/{HASH}/out/{FILES_DIR}/{}-0-intellij-bep-123",
                        std::process::id()
                    )),
                    to: PathBuf::from("/tmp/intellij-bep-123"),
                    translate: TEXT_FILE_FLAGS.contains(flag),
                }]
            );
        }
    }

    #[test]
    fn table() {
        let cwd = Path::new("/home/a/my repo");
        let out = format!("/fs/alice/{HASH}/out");
        // (args, expected args)
        let cases: Vec<(Vec<String>, Vec<String>)> = vec![
            (
                v(&["//app:x", "--keep_going"]),
                v(&["//app:x", "--keep_going"]),
            ),
            (
                v(&["--profile=../elsewhere/../my repo/p.gz"]),
                v(&["--profile=/work/src/p.gz"]),
            ),
            (
                v(&[&format!("--profile={out}/p.gz")]),
                v(&["--profile=/work/out/p.gz"]),
            ),
            (
                v(&["--override_repository=foo=third_party/foo"]),
                v(&["--override_repository=foo=/work/src/third_party/foo"]),
            ),
            (
                v(&["--override_repository", "foo=%workspace%/x"]),
                v(&["--override_repository=foo=%workspace%/x"]),
            ),
            // After `--`: the binary's arguments, untouched.
            (
                v(&["//app:x", "--", "--profile=/tmp/p"]),
                v(&["//app:x", "--", "--profile=/tmp/p"]),
            ),
            // A flag that only looks alike.
            (v(&["--profiles=/tmp/p"]), v(&["--profiles=/tmp/p"])),
        ];
        for (args, want) in cases {
            let r = rewrite(&args, cwd, &map()).expect("rewrite");
            assert_eq!(r.args, want, "{args:?}");
            assert!(r.deliveries.is_empty(), "{args:?}");
        }
    }

    #[test]
    fn override_outside_the_workspace_is_a_clear_error() {
        let err = rewrite(
            &v(&["--override_repository=foo=/opt/foo"]),
            Path::new("/home/a/my repo"),
            &map(),
        )
        .expect_err("outside");
        assert!(matches!(err, FileFlagError::OverrideOutside { .. }));
        let text = err.to_string();
        assert!(
            text.contains("/opt/foo") && text.contains("inside the workspace"),
            "{text}"
        );
        assert_eq!(
            rewrite(
                &v(&["--override_repository=nopath"]),
                Path::new("/"),
                &map()
            ),
            Err(FileFlagError::OverrideSyntax("nopath".into()))
        );
    }

    #[test]
    fn delivery_copies_regular_files_only_and_translates_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rw = map();
        let staged = dir.path().join("staged");
        let bep = b"{\"uri\":\"file:///work/out/execroot/__main__/bazel-out/x\",\"src\":\"/work/src/a.cc\"}";
        std::fs::write(&staged, bep).expect("write");
        let to = dir.path().join("bep.json");
        deliver(
            &Delivery {
                from: staged.clone(),
                to: to.clone(),
                translate: true,
            },
            &rw,
        )
        .expect("deliver");
        let want = format!(
            "{{\"uri\":\"file:///fs/alice/{HASH}/out/execroot/__main__/bazel-out/x\",\"src\":\"/home/a/my repo/a.cc\"}}"
        );
        assert_eq!(
            translate_text(b"file:///work/src/x", &map()),
            b"file:///home/a/my%20repo/x".to_vec()
        );
        assert_eq!(std::fs::read_to_string(&to).expect("read"), want);
        assert!(!staged.exists(), "the staged copy is removed");
        // Binary formats are copied byte for byte.
        std::fs::write(&staged, bep).expect("write");
        deliver(
            &Delivery {
                from: staged.clone(),
                to: to.clone(),
                translate: false,
            },
            &rw,
        )
        .expect("deliver");
        assert_eq!(std::fs::read(&to).expect("read"), bep);
        // A symlink written by the pod is not followed.
        std::os::unix::fs::symlink("/etc/hostname", &staged).expect("link");
        let err = deliver(
            &Delivery {
                from: staged,
                to: dir.path().join("x"),
                translate: false,
            },
            &rw,
        )
        .expect_err("link");
        assert!(matches!(err, DeliveryError::NotAFile { .. }), "{err}");
        let err = deliver(
            &Delivery {
                from: dir.path().join("none"),
                to: dir.path().join("y"),
                translate: false,
            },
            &rw,
        )
        .expect_err("missing");
        assert!(matches!(err, DeliveryError::Missing { .. }));
    }
}
