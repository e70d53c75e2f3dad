//! What the real terminal says (I/O edge): is a stream a TTY, how wide is it; and Bazel's
//! rule for the width it is told (pure, [`columns`]).

use std::os::fd::{AsRawFd, RawFd};

/// Whether the file descriptor is a terminal.
pub fn isatty(fd: &impl AsRawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

/// The width of the terminal on `fd`, None when it is not one.
pub fn width(fd: RawFd) -> Option<u16> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } != -1;
    ok.then_some(ws.ws_col)
}

/// Bazel's `GetTerminalColumns()`: the width of stdout's terminal, else `$COLUMNS`, else 80.
pub fn columns(stdout_width: Option<u16>, columns_var: Option<&str>) -> u32 {
    match stdout_width {
        Some(w) => u32::from(w),
        None => columns_var.and_then(|c| c.parse().ok()).unwrap_or(80),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_table() {
        for (width, var, want) in [
            (Some(120), Some("90"), 120),
            (Some(0), None, 0),
            (None, Some("90"), 90),
            (None, Some("wide"), 80),
            (None, None, 80),
        ] {
            assert_eq!(columns(width, var), want, "{width:?} {var:?}");
        }
    }
}
