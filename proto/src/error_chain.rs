//! The one way the platform's programs print an error: the error, then each of its causes,
//! once each, joined by `": "` (`cannot start pod x: connection refused`).
//!
//! The rule that makes this work: an error's `Display` never repeats its source; the
//! source is reached through [`std::error::Error::source`] and printed here. jbazel,
//! the orchestrator and the supervisor all print their final error and their logged
//! errors with [`ErrorChain`], so a message reads the same wherever it is shown.

use std::error::Error;
use std::fmt;

/// Displays an error and its whole source chain on one line.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut current: Option<&(dyn Error + 'static)> = Some(self.0);
        let mut first = true;
        while let Some(e) = current {
            let text = e.to_string();
            // A wrapper without text of its own (`#[error(transparent)]`-like) adds nothing.
            if !text.is_empty() {
                if !first {
                    f.write_str(": ")?;
                }
                f.write_str(&text)?;
                first = false;
            }
            current = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection refused")
        }
    }
    impl Error for Leaf {}

    #[derive(Debug)]
    struct Wrap(&'static str, Leaf);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn prints_each_cause_once_in_order() {
        let e = Wrap("cannot create pod bazel-server-alice-0123", Leaf);
        assert_eq!(
            ErrorChain(&e).to_string(),
            "cannot create pod bazel-server-alice-0123: connection refused"
        );
        assert_eq!(ErrorChain(&Leaf).to_string(), "connection refused");
    }

    #[test]
    fn skips_empty_wrappers() {
        let e = Wrap("", Leaf);
        assert_eq!(ErrorChain(&e).to_string(), "connection refused");
    }
}
