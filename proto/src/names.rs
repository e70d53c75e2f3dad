//! The API's rules for the identifiers every program receives from outside.
//!
//! UserId and RepoHash become filesystem paths (`R/<user>/<repo_hash>`) and pod names, and
//! SessionId becomes a label value. All three programs hold them as the newtypes
//! [`UserId`], [`RepoHash`] and [`SessionId`], which are built only by parsing (`parse`,
//! `FromStr`, `TryFrom<String>`): a value of one of these types has been validated, so no
//! other code checks again or forgets to. Pure, no I/O.

use std::fmt;

/// Longest UserId accepted: a DNS label.
pub const MAX_USER_ID_LEN: usize = 63;
/// Longest SessionId accepted: a Kubernetes label value.
pub const MAX_SESSION_ID_LEN: usize = 63;

/// Which field failed and why; the message is written for the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    /// The API field name (`user_id`, `repo_hash`, `session_id`).
    pub field: &'static str,
    /// What is wrong, without echoing a possibly huge or binary value.
    pub reason: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidName {}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidName {
    InvalidName {
        field,
        reason: reason.into(),
    }
}

/// UserId: a DNS label (RFC 1123): 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn validate_user_id(user_id: &str) -> Result<(), InvalidName> {
    const F: &str = "user_id";
    if user_id.is_empty() {
        return Err(invalid(F, "empty"));
    }
    if user_id.len() > MAX_USER_ID_LEN {
        return Err(invalid(
            F,
            format!("{} bytes, at most {MAX_USER_ID_LEN}", user_id.len()),
        ));
    }
    if let Some(c) = user_id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(invalid(
            F,
            format!("character {c:?} not allowed (lower-case letters, digits and '-' only)"),
        ));
    }
    if user_id.starts_with('-') || user_id.ends_with('-') {
        return Err(invalid(F, "must start and end with a letter or digit"));
    }
    Ok(())
}

/// RepoHash: the MD5 of the workspace path, exactly 32 lower-case hex digits.
pub fn validate_repo_hash(repo_hash: &str) -> Result<(), InvalidName> {
    const F: &str = "repo_hash";
    if repo_hash.len() != 32 {
        return Err(invalid(
            F,
            format!(
                "{} bytes, must be 32 lower-case hex digits (md5)",
                repo_hash.len()
            ),
        ));
    }
    if !repo_hash
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(F, "must be 32 lower-case hex digits (md5)"));
    }
    Ok(())
}

/// SessionId: a Kubernetes label value: 1-63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn validate_session_id(session_id: &str) -> Result<(), InvalidName> {
    const F: &str = "session_id";
    if session_id.is_empty() {
        return Err(invalid(F, "empty"));
    }
    if session_id.len() > MAX_SESSION_ID_LEN {
        return Err(invalid(
            F,
            format!("{} bytes, at most {MAX_SESSION_ID_LEN}", session_id.len()),
        ));
    }
    if let Some(c) = session_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            F,
            format!("character {c:?} not allowed (letters, digits, '.', '_', '-')"),
        ));
    }
    let first_last_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_last_ok(session_id.chars().next()) || !first_last_ok(session_id.chars().last()) {
        return Err(invalid(F, "must start and end with a letter or digit"));
    }
    Ok(())
}

/// Defines a validated-string newtype: built only by parsing, read as `&str`.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $validate:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                $validate(&value)?;
                Ok($name(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// A name is also a path component (`R/<user>/<repo_hash>`).
        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, InvalidName> {
                $name::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                $name::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// A validated UserId (see [`validate_user_id`]): a DNS label.
    UserId,
    validate_user_id
);
name_type!(
    /// A validated RepoHash (see [`validate_repo_hash`]): 32 lower-case hex digits.
    RepoHash,
    validate_repo_hash
);
name_type!(
    /// A validated SessionId (see [`validate_session_id`]): a Kubernetes label value.
    SessionId,
    validate_session_id
);

impl RepoHash {
    /// The RepoHash of an MD5 digest: its 32 lower-case hex digits, valid by construction.
    pub fn from_md5(digest: [u8; 16]) -> RepoHash {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(32);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        RepoHash(hex)
    }
}

/// The three names of a request, validated in the order the API lists them.
pub fn parse_request_names(
    user_id: &str,
    repo_hash: &str,
    session_id: &str,
) -> Result<(UserId, RepoHash, SessionId), InvalidName> {
    Ok((
        UserId::parse(user_id)?,
        RepoHash::parse(repo_hash)?,
        SessionId::parse(session_id)?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn newtypes_are_built_only_from_valid_values() {
        let u: UserId = "alice".parse().expect("valid");
        assert_eq!(u.as_str(), "alice");
        assert_eq!(u, "alice");
        assert_eq!(u.to_string(), "alice");
        assert!(UserId::parse("Alice").is_err());
        assert!(RepoHash::try_from("x".to_string()).is_err());
        let h = RepoHash::parse("0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(String::from(h), "0123456789abcdef0123456789abcdef");
        assert_eq!(SessionId::parse("").unwrap_err().field, "session_id");
        let from_md5 = RepoHash::from_md5([0xab; 16]);
        assert_eq!(from_md5, "abababababababababababababababab");
        assert_eq!(RepoHash::parse(from_md5.as_str()), Ok(from_md5));
        let err = parse_request_names("alice", "nothex", "").unwrap_err();
        assert_eq!(err.field, "repo_hash", "first bad field in API order");
    }

    use super::*;

    #[test]
    fn user_ids() {
        for ok in ["alice", "a", "bob-2", "0x", &"a".repeat(63)] {
            assert_eq!(validate_user_id(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "Alice",
            "../etc",
            "a/b",
            "a.b",
            "-a",
            "a-",
            "a\0b",
            "ålice",
            "a b",
            &"a".repeat(64),
            &"x".repeat(10_000),
        ] {
            let err = validate_user_id(bad).expect_err(bad);
            assert_eq!(err.field, "user_id");
            assert!(err.to_string().len() < 200, "message must not echo input");
        }
    }

    #[test]
    fn repo_hashes() {
        assert_eq!(
            validate_repo_hash("0123456789abcdef0123456789abcdef"),
            Ok(())
        );
        for bad in [
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "../../../../../../../../etc/pass",
            "0123456789abcdef0123456789abcde\0",
            "g123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(validate_repo_hash(bad).expect_err(bad).field, "repo_hash");
        }
    }

    #[test]
    fn session_ids() {
        for ok in ["s1", "boot-3f2a.7_x", "A", &"z".repeat(63)] {
            assert_eq!(validate_session_id(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "-s", "s-", "a/b", "a b", "é", "a\nb", &"z".repeat(64)] {
            assert_eq!(validate_session_id(bad).expect_err(bad).field, "session_id");
        }
    }
}
