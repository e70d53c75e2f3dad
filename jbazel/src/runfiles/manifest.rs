//! Bazel 4's runfiles manifest, read (pure).

use super::os;
use std::path::PathBuf;

/// One manifest line: a runfiles path and its target (None: an empty file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub target: Option<PathBuf>,
}

/// Bazel 4's runfiles manifest: `<path> <target>\n`, the target empty for an empty file.
pub fn parse_manifest(text: &[u8]) -> Vec<Entry> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| match line.iter().position(|b| *b == b' ') {
            Some(i) => Entry {
                path: line[..i].to_vec(),
                target: Some(&line[i + 1..]).filter(|t| !t.is_empty()).map(os),
            },
            None => Entry {
                path: line.to_vec(),
                target: None,
            },
        })
        .collect()
}

/// A runfiles path usable in the view and in a manifest: relative, no empty, `.` or `..`
/// component, no space or newline, and not the view's own `MANIFEST`.
pub(super) fn valid_runfiles_path(p: &[u8]) -> bool {
    !p.is_empty()
        && p != b"MANIFEST"
        && !p.iter().any(|b| matches!(b, b' ' | b'\n' | 0))
        && p.split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parse_table() {
        let text = "__main__/runfiles/data.txt /work/src/runfiles/data.txt\n\
                    __main__/pkg/__init__.py \n\
                    __main__/bare\n\
                    \n\
                    __main__/sp /work/src/a b\n";
        let e = |p: &str, t: Option<&str>| Entry {
            path: p.as_bytes().to_vec(),
            target: t.map(PathBuf::from),
        };
        assert_eq!(
            parse_manifest(text.as_bytes()),
            vec![
                e(
                    "__main__/runfiles/data.txt",
                    Some("/work/src/runfiles/data.txt")
                ),
                e("__main__/pkg/__init__.py", None),
                e("__main__/bare", None),
                e("__main__/sp", Some("/work/src/a b")),
            ]
        );
    }
}
