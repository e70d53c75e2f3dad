//! Workspace root discovery and the RepoHash.
//!
//! The root is the nearest directory, walking up from the working directory, that holds a
//! *regular file* (or a symlink to one) named `MODULE.bazel`, `REPO.bazel`, `WORKSPACE.bazel`
//! or `WORKSPACE`, as Bazel's client and bazelisk do. A directory with one of those names is
//! not a marker.
//!
//! ## Symlinks
//! The walk starts from the *physical* working directory (`getcwd(2)`, every symlink
//! resolved), exactly like Bazel's own client (`blaze_util::GetCwd`), and `$PWD` is ignored.
//! So the RepoHash is the MD5 of the physical path of the root. Why:
//! - one checkout has one hash however it is reached (`~/src/x` and `/data/home/u/src/x` are
//!   the same server and the same filestore entry), so a symlinked shell never spawns a
//!   second Bazel server for the same files;
//! - the filestore mirror is mounted at the physical path (a mount point resolves its
//!   target), so that is the path the filestore was laid out for;
//! - the Bazel server would see the same root as a local Bazel would (its `workspace`).
//!
//! Pure functions over a [`MarkerProbe`] so the walk is table-tested without touching a disk.

use md5::{Digest, Md5};
use proto::names::RepoHash;
use std::path::{Path, PathBuf};

/// The marker files, in the order they are reported (any one makes a root).
pub const MARKERS: [&str; 4] = ["MODULE.bazel", "REPO.bazel", "WORKSPACE.bazel", "WORKSPACE"];

/// Answers "is `dir/name` a regular file?" (following a final symlink, like `stat`).
pub trait MarkerProbe {
    fn is_regular_file(&self, path: &Path) -> bool;
}

/// The real filesystem.
pub struct Disk;

impl MarkerProbe for Disk {
    fn is_regular_file(&self, path: &Path) -> bool {
        std::fs::metadata(path)
            .map(|m| m.is_file())
            .unwrap_or(false)
    }
}

/// A discovered workspace root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The root's absolute physical path.
    pub root: PathBuf,
    /// The marker that made it a root (the first of [`MARKERS`] present).
    pub marker: &'static str,
}

/// Why no root was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkspaceError {
    /// No ancestor of the directory holds a marker file.
    #[error(
        "not in a Bazel workspace: no MODULE.bazel, REPO.bazel, WORKSPACE.bazel or WORKSPACE \
         file in {} or any parent directory",
        start.display()
    )]
    NotFound { start: PathBuf },
    /// The start directory is relative (the caller must pass the physical cwd).
    #[error("workspace search needs an absolute directory, got {}", start.display())]
    Relative { start: PathBuf },
}

/// Walks up from `start` (an absolute, physical directory) to the nearest root.
pub fn find_root(start: &Path, probe: &dyn MarkerProbe) -> Result<Workspace, WorkspaceError> {
    if !start.is_absolute() {
        return Err(WorkspaceError::Relative {
            start: start.to_path_buf(),
        });
    }
    let mut dir = Some(start);
    while let Some(d) = dir {
        for marker in MARKERS {
            if probe.is_regular_file(&d.join(marker)) {
                return Ok(Workspace {
                    root: d.to_path_buf(),
                    marker,
                });
            }
        }
        dir = d.parent();
    }
    Err(WorkspaceError::NotFound {
        start: start.to_path_buf(),
    })
}

/// RepoHash: lower-case hex MD5 of the root's absolute path, as bytes, with no trailing
/// slash (`/home/u/src/x`, never `/home/u/src/x/`).
pub fn repo_hash(root: &Path) -> RepoHash {
    use std::os::unix::ffi::OsStrExt;
    let bytes = root.as_os_str().as_bytes();
    let trimmed = if bytes.len() > 1 {
        bytes.strip_suffix(b"/").unwrap_or(bytes)
    } else {
        bytes
    };
    RepoHash::from_md5(Md5::digest(trimmed).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    struct Fake(HashSet<PathBuf>);
    impl MarkerProbe for Fake {
        fn is_regular_file(&self, path: &Path) -> bool {
            self.0.contains(path)
        }
    }
    fn fake(files: &[&str]) -> Fake {
        Fake(files.iter().map(PathBuf::from).collect())
    }

    #[test]
    fn root_discovery_table() {
        // (files that are regular files, start dir, expected root and marker)
        type Case<'a> = (&'a [&'a str], &'a str, Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            (&["/w/WORKSPACE"], "/w", Some(("/w", "WORKSPACE"))),
            (
                &["/w/WORKSPACE.bazel"],
                "/w/a/b",
                Some(("/w", "WORKSPACE.bazel")),
            ),
            (&["/w/MODULE.bazel"], "/w/a", Some(("/w", "MODULE.bazel"))),
            (&["/w/REPO.bazel"], "/w/a", Some(("/w", "REPO.bazel"))),
            // Nearest wins, whatever the marker.
            (
                &["/w/WORKSPACE", "/w/a/REPO.bazel"],
                "/w/a/b",
                Some(("/w/a", "REPO.bazel")),
            ),
            (
                &["/w/MODULE.bazel", "/w/a/WORKSPACE"],
                "/w/a",
                Some(("/w/a", "WORKSPACE")),
            ),
            // Two markers in one dir: the first of MARKERS is reported.
            (
                &["/w/WORKSPACE", "/w/MODULE.bazel"],
                "/w",
                Some(("/w", "MODULE.bazel")),
            ),
            // The root directory itself can be a workspace.
            (&["/WORKSPACE"], "/x/y", Some(("/", "WORKSPACE"))),
            // No marker at all.
            (&[], "/w/a", None),
            // A file with another name is no marker.
            (&["/w/WORKSPACE.txt", "/w/BUILD"], "/w", None),
        ];
        for (files, start, want) in cases {
            let got = find_root(Path::new(start), &fake(files));
            match want {
                Some((root, marker)) => {
                    let ws = got.unwrap_or_else(|e| panic!("{files:?} {start}: {e}"));
                    assert_eq!(ws.root, PathBuf::from(root), "{files:?} {start}");
                    assert_eq!(ws.marker, *marker, "{files:?} {start}");
                }
                None => assert!(
                    matches!(got, Err(WorkspaceError::NotFound { .. })),
                    "{files:?} {start}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn relative_start_is_rejected() {
        assert!(matches!(
            find_root(Path::new("w/a"), &fake(&["w/WORKSPACE"])),
            Err(WorkspaceError::Relative { .. })
        ));
    }

    #[test]
    fn a_directory_named_workspace_is_not_a_marker_on_disk() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("outer");
        let inner = root.join("inner");
        std::fs::create_dir_all(inner.join("WORKSPACE")).expect("mkdir");
        std::fs::create_dir_all(inner.join("MODULE.bazel")).expect("mkdir");
        std::fs::write(root.join("WORKSPACE.bazel"), "").expect("write");
        let ws = find_root(&inner, &Disk).expect("root");
        assert_eq!(ws.root, root);
        assert_eq!(ws.marker, "WORKSPACE.bazel");
        // A symlink to a regular file counts (stat follows it), like Bazel's PathExists.
        let other = t.path().join("other");
        std::fs::create_dir_all(&other).expect("mkdir");
        std::os::unix::fs::symlink(root.join("WORKSPACE.bazel"), other.join("WORKSPACE"))
            .expect("symlink");
        assert_eq!(find_root(&other, &Disk).expect("root").root, other);
    }

    #[test]
    fn repo_hash_is_md5_of_the_path() {
        // printf %s PATH | md5sum
        let cases = [
            (
                "/home/alice/src/project",
                "a98ab360bd19925198be45fc0d3911af",
            ),
            (
                "/home/alice/src/project/",
                "a98ab360bd19925198be45fc0d3911af",
            ),
            ("/", "6666cd76f96956469e7be39d750cc7d9"),
        ];
        for (path, want) in cases {
            let got = repo_hash(Path::new(path));
            assert_eq!(got, want, "{path}");
        }
    }
}
