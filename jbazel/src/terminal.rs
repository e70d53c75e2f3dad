//! What the real terminal says (I/O edge): is a stream a TTY, how wide is it.

use std::os::fd::AsRawFd;

/// Whether the file descriptor is a terminal.
pub fn isatty(fd: &impl AsRawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

/// The width of stderr's terminal (where progress is drawn); 0 when unknown.
pub fn stderr_columns() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } != -1;
    if ok {
        usize::from(ws.ws_col)
    } else {
        0
    }
}

/// Bazel's `GetTerminalColumns()`: the width of stdout's terminal, else `$COLUMNS`, else 80.
pub fn columns() -> u32 {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } != -1;
    if ok {
        return u32::from(ws.ws_col);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80)
}
