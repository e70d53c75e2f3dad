//! Views on disk (I/O): a private base directory, each view built beside its place and
//! renamed into it, reused when identical, older ones swept.

use super::plan::{Node, View};
use super::RunfilesError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A temporary view older than this is left over by a killed jbazel.
const STALE_TMP: Duration = Duration::from_secs(600);

/// Where the views live: `$XDG_RUNTIME_DIR/jbazel-run`, else `$TMPDIR/jbazel-run-<uid>`.
pub fn default_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(xdg) => xdg.join("jbazel-run"),
        None => {
            std::env::temp_dir().join(format!("jbazel-run-{}", nix::unistd::geteuid().as_raw()))
        }
    }
}

/// Creates `base` 0700 if missing; refuses it unless it is a directory of this user that
/// nobody else can enter (it may be in a shared `/tmp`).
pub(super) fn private_dir(base: &Path) -> Result<(), RunfilesError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::geteuid().as_raw();
    let err = |source| RunfilesError::Base {
        path: base.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(err(source)),
    }
    let meta = std::fs::symlink_metadata(base).map_err(err)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(RunfilesError::NotPrivate {
            path: base.to_path_buf(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Creates the view's files under `root` (a new, empty, private directory).
fn write_view(root: &Path, view: &View) -> Result<(), RunfilesError> {
    use std::os::unix::fs::symlink;
    let create = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunfilesError::Create { path, source }
    };
    let exe = root.join(&view.name);
    symlink(&view.executable, &exe).map_err(create(&exe))?;
    let rf = root.join(view.runfiles_name());
    std::fs::create_dir(&rf).map_err(create(&rf))?;
    for (path, node) in &view.tree.links {
        let p = rf.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(create(parent))?;
        }
        match node {
            Node::Link(t) => symlink(t, &p).map_err(create(&p))?,
            Node::Empty => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(create(&p))?;
            }
        }
    }
    let cwd = rf.join(&view.cwd);
    std::fs::create_dir_all(&cwd).map_err(create(&cwd))?;
    let manifest = view.tree.manifest();
    let mut sibling = rf.clone().into_os_string();
    sibling.push("_manifest");
    for path in [rf.join("MANIFEST"), PathBuf::from(sibling)] {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&manifest))
            .map_err(create(&path))?;
    }
    Ok(())
}

/// `base/<key>-<content>`: reused when present, else built beside it and renamed into
/// place. Returns the directory and whether it was reused.
pub fn materialize(base: &Path, key: &str, view: &View) -> Result<(PathBuf, bool), RunfilesError> {
    let dir = base.join(format!("{key}-{}", view.content_hash()));
    if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Ok((dir, true));
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{key}-"))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(base)
        .map_err(|source| RunfilesError::Create {
            path: base.to_path_buf(),
            source,
        })?;
    write_view(tmp.path(), view)?;
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok((dir, false))
        }
        // Another jbazel made the same view meanwhile (ours is dropped).
        Err(_) if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) => Ok((dir, true)),
        Err(source) => Err(RunfilesError::Create { path: dir, source }),
    }
}

/// Removes the other views of the same binary, and its temporary views left by a killed
/// jbazel. Failures are only logged: the view in use is complete either way.
pub fn sweep(base: &Path, key: &str, keep: &Path) {
    let Ok(list) = std::fs::read_dir(base) else {
        return;
    };
    let (view_prefix, tmp_prefix) = (format!("{key}-"), format!(".tmp-{key}-"));
    for entry in list.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let stale = if name.starts_with(&view_prefix) {
            path != keep
        } else if name.starts_with(&tmp_prefix) {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP)
        } else {
            false
        };
        if stale {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove an old runfiles view");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::TreePlan;
    use super::*;

    fn sample_view(target: &Path) -> View {
        View {
            name: "tool".into(),
            executable: target.join("tool.sh"),
            cwd: PathBuf::from("__main__"),
            tree: TreePlan {
                links: vec![
                    (
                        PathBuf::from("__main__/a/data.txt"),
                        Node::Link(target.join("data.txt")),
                    ),
                    (PathBuf::from("__main__/a/empty"), Node::Empty),
                    (PathBuf::from("ext/x"), Node::Link(target.join("x"))),
                ],
                skipped: vec![],
            },
        }
    }

    #[test]
    fn materialize_builds_reuses_and_sweeps() {
        let t = tempfile::tempdir().expect("tempdir");
        let base = t.path().join("base");
        std::fs::create_dir(&base).expect("mkdir");
        let view = sample_view(Path::new("/src"));
        let (dir, reused) = materialize(&base, "k", &view).expect("view");
        assert!(!reused);
        let rl = |p: &str| std::fs::read_link(dir.join(p)).expect(p);
        assert_eq!(rl("tool"), PathBuf::from("/src/tool.sh"));
        assert_eq!(
            rl("tool.runfiles/__main__/a/data.txt"),
            PathBuf::from("/src/data.txt")
        );
        assert_eq!(rl("tool.runfiles/ext/x"), PathBuf::from("/src/x"));
        let empty = std::fs::symlink_metadata(dir.join("tool.runfiles/__main__/a/empty"))
            .expect("empty file");
        assert!(empty.is_file() && empty.len() == 0);
        let manifest = "__main__/a/data.txt /src/data.txt\n__main__/a/empty \next/x /src/x\n";
        for m in ["tool.runfiles/MANIFEST", "tool.runfiles_manifest"] {
            assert_eq!(std::fs::read_to_string(dir.join(m)).expect(m), manifest);
        }
        assert!(dir.join("tool.runfiles/__main__").is_dir());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the view is private: {mode:o}");
        }

        // The same view again: reused, nothing written.
        let (again, reused) = materialize(&base, "k", &view).expect("again");
        assert_eq!((again.as_path(), reused), (dir.as_path(), true));

        // A new build: a new view; the sweep removes the old one of this binary only, and
        // temporary views only when stale.
        let other_binary = base.join("j-0000");
        std::fs::create_dir(&other_binary).expect("mkdir");
        let fresh_tmp = base.join(".tmp-k-fresh");
        std::fs::create_dir(&fresh_tmp).expect("mkdir");
        let new = sample_view(Path::new("/src2"));
        let (dir2, reused) = materialize(&base, "k", &new).expect("new view");
        assert!(!reused);
        assert_ne!(dir2, dir);
        sweep(&base, "k", &dir2);
        assert!(!dir.exists(), "old view removed");
        assert!(dir2.is_dir() && other_binary.is_dir() && fresh_tmp.is_dir());
        let names: Vec<String> = std::fs::read_dir(&base)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
