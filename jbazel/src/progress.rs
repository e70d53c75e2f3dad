//! Spawn progress on stderr: a spinner with the current stage on a terminal, one plain line
//! per stage change otherwise (logs and CI stay readable).

use std::io::Write;
use std::time::{Duration, Instant};

/// Receives the orchestrator's progress.
pub trait Progress: Send {
    /// A (possibly new) stage and its message.
    fn stage(&mut self, stage: &str, message: &str);
    /// Time passes (redraw a spinner).
    fn tick(&mut self);
    /// Done, successfully or not: leave the terminal clean.
    fn finish(&mut self);
}

/// Nothing shown (dry runs, tests).
pub struct Silent;

impl Progress for Silent {
    fn stage(&mut self, _: &str, _: &str) {}
    fn tick(&mut self) {}
    fn finish(&mut self) {}
}

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A one-line spinner redrawn in place.
pub struct Spinner<W: Write + Send> {
    out: W,
    start: Instant,
    frame: usize,
    line: String,
    drawn: bool,
}

impl<W: Write + Send> Spinner<W> {
    pub fn new(out: W) -> Self {
        Spinner {
            out,
            start: Instant::now(),
            frame: 0,
            line: String::new(),
            drawn: false,
        }
    }

    fn draw(&mut self) {
        let secs = self.start.elapsed().as_secs_f32();
        let f = FRAMES[self.frame % FRAMES.len()];
        // Errors writing progress are not worth failing a build for.
        let _ = write!(self.out, "\r\x1b[2K{f} jbazel: {} ({secs:.1}s)", self.line);
        let _ = self.out.flush();
        self.drawn = true;
    }
}

impl<W: Write + Send> Progress for Spinner<W> {
    fn stage(&mut self, stage: &str, message: &str) {
        self.line = if message.is_empty() {
            stage.to_string()
        } else {
            format!("{stage}: {message}")
        };
        self.draw();
    }
    fn tick(&mut self) {
        self.frame += 1;
        if !self.line.is_empty() {
            self.draw();
        }
    }
    fn finish(&mut self) {
        if self.drawn {
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
            self.drawn = false;
        }
    }
}

/// One line per change: `jbazel: [1.2s] pod scheduled: pulling image`.
pub struct PlainLines<W: Write + Send> {
    out: W,
    start: Instant,
    last: String,
}

impl<W: Write + Send> PlainLines<W> {
    pub fn new(out: W) -> Self {
        PlainLines {
            out,
            start: Instant::now(),
            last: String::new(),
        }
    }
}

impl<W: Write + Send> Progress for PlainLines<W> {
    fn stage(&mut self, stage: &str, message: &str) {
        let line = if message.is_empty() {
            stage.to_string()
        } else {
            format!("{stage}: {message}")
        };
        if line != self.last {
            let secs = self.start.elapsed().as_secs_f32();
            let _ = writeln!(self.out, "jbazel: [{secs:.1}s] {line}");
            self.last = line;
        }
    }
    fn tick(&mut self) {}
    fn finish(&mut self) {}
}

/// How often a spinner is redrawn.
pub const TICK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    #[test]
    fn plain_lines_print_each_change_once() {
        let b = Buf::default();
        let mut p = PlainLines::new(b.clone());
        p.stage("pod pending", "");
        p.stage("pod pending", "");
        p.tick();
        p.stage("pod scheduled", "pulling");
        p.finish();
        let t = b.text();
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(t.contains("] pod pending\n"), "{t}");
        assert!(t.contains("] pod scheduled: pulling\n"), "{t}");
        assert!(!t.contains('\r'), "no terminal control in plain mode");
    }

    #[test]
    fn spinner_redraws_in_place_and_clears() {
        let b = Buf::default();
        let mut p = Spinner::new(b.clone());
        p.stage("starting Bazel server", "");
        p.tick();
        p.finish();
        let t = b.text();
        assert!(t.contains("⠋ jbazel: starting Bazel server"), "{t}");
        assert!(t.contains("⠙ jbazel: starting Bazel server"), "{t}");
        assert!(t.ends_with("\r\x1b[2K"), "{t:?}");
        assert!(!t.contains('\n'));
    }
}
