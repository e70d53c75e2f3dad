//! Who is asking: UserId and SessionId.
//!
//! - UserId: `JBAZEL_USER` when set, else the login name of the real uid (passwd entry).
//!   Parsed into a [`proto::names::UserId`]; a login name that is not a DNS label
//!   (`John.Doe`) is refused with a hint to set `JBAZEL_USER` rather than silently mangled,
//!   since two mangled names could collide on one server.
//! - SessionId: `JBAZEL_SESSION_ID` when set, else derived from the desktop login session so
//!   it is stable across terminals of one login and changes after a bounce (reboot or new
//!   login): `<boot id, 12 hex>-<login session>`, where the login session is the first of
//!   logind's `XDG_SESSION_ID`, the kernel's audit session (`/proc/self/sessionid`, set by
//!   pam_loginuid at login; `4294967295` means unset), or `boot` when neither exists (then
//!   only a reboot is a bounce).
//!
//! The derivation is a pure function ([`derive_session_id`]); [`Sources::read`] gathers its
//! inputs at the edge.

use proto::names::{InvalidName, SessionId, UserId};

/// The audit session id of a process without one.
const AUDIT_UNSET: &str = "4294967295";

/// Why an identity could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `JBAZEL_USER` or the login name is not a valid UserId.
    #[error("user {user:?} from {origin} is not a valid user id (set JBAZEL_USER to a lower-case DNS label)")]
    BadUser {
        user: String,
        origin: &'static str,
        #[source]
        source: InvalidName,
    },
    /// `JBAZEL_SESSION_ID` is not a valid SessionId.
    #[error("JBAZEL_SESSION_ID is not a valid session id")]
    BadSession {
        #[source]
        source: InvalidName,
    },
    /// Neither `JBAZEL_USER` nor a passwd entry for the uid.
    #[error("cannot find the login name of uid {uid}; set JBAZEL_USER")]
    NoLogin { uid: u32 },
    /// The derived session is invalid (a bug in the derivation or very odd inputs).
    #[error("derived session id {session:?} is invalid (set JBAZEL_SESSION_ID)")]
    Derived {
        session: String,
        #[source]
        source: InvalidName,
    },
}

/// The inputs of the identity, read from the environment and /proc.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub jbazel_user: Option<String>,
    pub login_name: Option<String>,
    pub uid: u32,
    pub jbazel_session_id: Option<String>,
    pub boot_id: Option<String>,
    pub xdg_session_id: Option<String>,
    pub audit_session_id: Option<String>,
}

impl Sources {
    /// Reads the real sources (env for overrides, passwd, /proc).
    pub fn read(jbazel_user: Option<String>, jbazel_session_id: Option<String>) -> Self {
        let uid = nix::unistd::getuid();
        let login_name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name);
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        Sources {
            jbazel_user: jbazel_user.filter(|s| !s.is_empty()),
            login_name,
            uid: uid.as_raw(),
            jbazel_session_id: jbazel_session_id.filter(|s| !s.is_empty()),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            xdg_session_id: std::env::var("XDG_SESSION_ID")
                .ok()
                .filter(|s| !s.is_empty()),
            audit_session_id: read("/proc/self/sessionid"),
        }
    }
}

/// Who is asking: the settled UserId and SessionId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub session_id: SessionId,
}

/// UserId and SessionId from their sources, validated.
pub fn resolve(src: &Sources) -> Result<Caller, IdentityError> {
    let (user, origin) = match (&src.jbazel_user, &src.login_name) {
        (Some(u), _) => (u.clone(), "JBAZEL_USER"),
        (None, Some(u)) => (u.clone(), "the login name"),
        (None, None) => return Err(IdentityError::NoLogin { uid: src.uid }),
    };
    let user_id = UserId::parse(user.as_str()).map_err(|source| IdentityError::BadUser {
        user: user.clone(),
        origin,
        source,
    })?;
    let session_id = match &src.jbazel_session_id {
        Some(s) => {
            SessionId::parse(s.as_str()).map_err(|source| IdentityError::BadSession { source })?
        }
        None => {
            let s = derive_session_id(
                src.boot_id.as_deref(),
                src.xdg_session_id.as_deref(),
                src.audit_session_id.as_deref(),
            );
            SessionId::parse(s.as_str()).map_err(|source| IdentityError::Derived {
                session: s.clone(),
                source,
            })?
        }
    };
    Ok(Caller {
        user_id,
        session_id,
    })
}

/// `<boot12>-<login>`: stable within one boot and login session, new after either changes.
pub fn derive_session_id(
    boot_id: Option<&str>,
    xdg_session_id: Option<&str>,
    audit_session_id: Option<&str>,
) -> String {
    let boot: String = boot_id
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    let boot = if boot.is_empty() {
        "noboot".to_string()
    } else {
        boot
    };
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(32)
            .collect()
    };
    let login = xdg_session_id
        .map(clean)
        .filter(|s| !s.is_empty())
        .map(|s| format!("s{s}"))
        .or_else(|| {
            audit_session_id
                .filter(|s| *s != AUDIT_UNSET)
                .map(clean)
                .filter(|s| !s.is_empty())
                .map(|s| format!("a{s}"))
        })
        .unwrap_or_else(|| "boot".to_string());
    format!("{boot}-{login}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "3f2a9c1e-77b0-4c1d-9e0a-0123456789ab";

    #[test]
    fn session_derivation_table() {
        let cases = [
            (Some(BOOT), Some("c2"), Some("17"), "3f2a9c1e77b0-sc2"),
            (Some(BOOT), None, Some("17"), "3f2a9c1e77b0-a17"),
            (Some(BOOT), None, Some(AUDIT_UNSET), "3f2a9c1e77b0-boot"),
            (Some(BOOT), Some(""), None, "3f2a9c1e77b0-boot"),
            (None, Some("5"), None, "noboot-s5"),
            (Some(BOOT), Some("../x y"), None, "3f2a9c1e77b0-sxy"),
        ];
        for (boot, xdg, audit, want) in cases {
            let got = derive_session_id(boot, xdg, audit);
            assert_eq!(got, want, "{boot:?} {xdg:?} {audit:?}");
            assert!(SessionId::parse(got.as_str()).is_ok(), "{got}");
        }
        // A bounce (new boot id, or a new login session) gives another SessionId.
        let other_boot = "99999999-77b0-4c1d-9e0a-0123456789ab";
        assert_ne!(
            derive_session_id(Some(BOOT), Some("c2"), None),
            derive_session_id(Some(other_boot), Some("c2"), None)
        );
        assert_ne!(
            derive_session_id(Some(BOOT), Some("c2"), None),
            derive_session_id(Some(BOOT), Some("c3"), None)
        );
    }

    fn src() -> Sources {
        Sources {
            login_name: Some("alice".into()),
            uid: 1000,
            boot_id: Some(BOOT.into()),
            ..Default::default()
        }
    }

    #[test]
    fn resolve_table() {
        let id = resolve(&src()).expect("identity");
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.session_id, "3f2a9c1e77b0-boot");

        let over = Sources {
            jbazel_user: Some("bob".into()),
            jbazel_session_id: Some("test-1".into()),
            ..src()
        };
        let id = resolve(&over).expect("identity");
        assert_eq!(
            (id.user_id.as_str(), id.session_id.as_str()),
            ("bob", "test-1")
        );

        let bad_login = Sources {
            login_name: Some("John.Doe".into()),
            ..src()
        };
        let err = resolve(&bad_login).expect_err("bad login");
        assert!(err.to_string().contains("JBAZEL_USER"), "{err}");

        let bad_env = Sources {
            jbazel_user: Some("../root".into()),
            ..src()
        };
        assert!(matches!(
            resolve(&bad_env),
            Err(IdentityError::BadUser { .. })
        ));

        let bad_session = Sources {
            jbazel_session_id: Some("a b".into()),
            ..src()
        };
        assert!(matches!(
            resolve(&bad_session),
            Err(IdentityError::BadSession { .. })
        ));

        let nobody = Sources {
            login_name: None,
            ..src()
        };
        assert!(matches!(
            resolve(&nobody),
            Err(IdentityError::NoLogin { uid: 1000 })
        ));
    }
}
