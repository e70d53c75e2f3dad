//! Progress on stderr while jbazel waits (for the orchestrator, the pod, a restarting
//! server): never silent for long, and the fast path prints nothing.
//!
//! What the user sees, once a status is shown:
//! - on a terminal ([`Spinner`]): one line redrawn in place every [`TICK`] with the stage,
//!   the orchestrator's message and the seconds since the wait began:
//!   `⠹ jbazel: pod scheduled, creating container: pulling image (12.3s)`; cut to the
//!   terminal's width, cleared when the wait ends;
//! - otherwise ([`PlainLines`], logs and CI): a line at once for each new stage or message,
//!   `jbazel: [1.2s] stopping your previous server (session s-1)`, and while nothing changes
//!   a short `jbazel: [2.2s] still stopping your previous server (1s)` (stage and seconds in
//!   it) [`EVERY`] second after the last line. So a log never goes more than about a second
//!   (at most `EVERY` + `TICK`) without a line, and a minute's wait costs ~60 short lines.
//!
//! A status given with [`Progress::begin`] ("asking the orchestrator") is shown only once it
//! lasted [`QUIET`]: a warm command, answered at once, prints nothing. A [`Progress::stage`]
//! is shown at once.
//!
//! The decisions are pure ([`Pace`], time injected, table-tested); [`Spinner`] and
//! [`PlainLines`] feed them the clock and write what they say.

use std::io::Write;
use std::time::{Duration, Instant};

/// How often a waiting jbazel looks at the clock (and redraws a spinner).
pub const TICK: Duration = Duration::from_millis(100);
/// Plain mode: a "still ..." line this long after the last line.
pub const EVERY: Duration = Duration::from_secs(1);
/// A [`Progress::begin`] status is shown only once it lasted this long.
pub const QUIET: Duration = Duration::from_secs(1);

/// Receives what a waiting jbazel is waiting for.
pub trait Progress: Send {
    /// The wait begins with this status; shown only if it lasts [`QUIET`].
    fn begin(&mut self, stage: &str, message: &str);
    /// A (possibly new) stage and its message; shown at once.
    fn stage(&mut self, stage: &str, message: &str);
    /// Time passes (call every [`TICK`]).
    fn tick(&mut self);
    /// Done, successfully or not: leave the terminal clean.
    fn finish(&mut self);
}

/// Nothing shown (dry runs, tests).
pub struct Silent;

impl Progress for Silent {
    fn begin(&mut self, _: &str, _: &str) {}
    fn stage(&mut self, _: &str, _: &str) {}
    fn tick(&mut self) {}
    fn finish(&mut self) {}
}

/// How a stage and its message read on one line: `stage: message`, or the message alone
/// when it already says the stage (the orchestrator's "stopping your previous server
/// (session X)" under the stage "stopping your previous server").
pub fn describe(stage: &str, message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        stage.to_string()
    } else if stage.is_empty()
        || message
            .get(..stage.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(stage))
    {
        message.to_string()
    } else {
        format!("{stage}: {message}")
    }
}

/// `text` cut to fit a terminal line of `width` columns (one column kept free so the
/// cursor never wraps, which would break the redraw in place); 0 = unknown width.
pub fn fit(text: &str, width: usize) -> String {
    let room = width.saturating_sub(1);
    if width == 0 || text.chars().count() <= room {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(room.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    stage: String,
    message: String,
}

/// When to show what (pure: every decision takes `now`).
#[derive(Debug, Clone)]
pub struct Pace {
    start: Instant,
    status: Option<Status>,
    /// When the current stage (not message) began.
    stage_since: Instant,
    /// A quiet status is not shown before this.
    hidden_until: Option<Instant>,
    /// Whether the current status was shown.
    shown: bool,
    /// When the last plain line was printed.
    last_line: Option<Instant>,
}

impl Pace {
    /// The wait began at `start`.
    pub fn new(start: Instant) -> Self {
        Pace {
            start,
            status: None,
            stage_since: start,
            hidden_until: None,
            shown: false,
            last_line: None,
        }
    }

    /// A status at `now`; `quiet`: shown only once it lasted [`QUIET`]. The same status
    /// again changes nothing (except that a quiet one becomes loud).
    pub fn set(&mut self, stage: &str, message: &str, quiet: bool, now: Instant) {
        let new = Status {
            stage: stage.to_string(),
            message: message.to_string(),
        };
        if self.status.as_ref() == Some(&new) {
            if !quiet {
                self.hidden_until = None;
            }
            return;
        }
        if self.status.as_ref().is_none_or(|s| s.stage != new.stage) {
            self.stage_since = now;
        }
        self.status = Some(new);
        self.shown = false;
        self.hidden_until = quiet.then(|| now + QUIET);
    }

    fn visible(&self, now: Instant) -> bool {
        self.shown || self.hidden_until.is_none_or(|t| now >= t)
    }

    fn secs(&self, now: Instant) -> f32 {
        now.saturating_duration_since(self.start).as_secs_f32()
    }

    /// Plain mode: the line due at `now`, if any (then it counts as printed).
    pub fn plain_line(&mut self, now: Instant) -> Option<String> {
        let status = self.status.as_ref()?;
        if !self.visible(now) {
            return None;
        }
        let secs = self.secs(now);
        let line = if !self.shown {
            format!(
                "jbazel: [{secs:.1}s] {}",
                describe(&status.stage, &status.message)
            )
        } else if self
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= EVERY)
        {
            let in_stage = now.saturating_duration_since(self.stage_since).as_secs();
            format!("jbazel: [{secs:.1}s] still {} ({in_stage}s)", status.stage)
        } else {
            return None;
        };
        self.shown = true;
        self.last_line = Some(now);
        Some(line)
    }

    /// Terminal mode: the spinner line to draw at `now` with spinner frame `frame`, if any
    /// (once visible, one at every call).
    pub fn spinner_line(&mut self, now: Instant, frame: char, width: usize) -> Option<String> {
        let status = self.status.as_ref()?;
        if !self.visible(now) {
            return None;
        }
        let secs = self.secs(now);
        let text = format!(
            "{frame} jbazel: {} ({secs:.1}s)",
            describe(&status.stage, &status.message)
        );
        self.shown = true;
        Some(fit(&text, width))
    }

    /// Whether anything was shown since the last status change.
    pub fn shown(&self) -> bool {
        self.shown
    }
}

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A one-line spinner redrawn in place (a terminal).
pub struct Spinner<W: Write + Send> {
    out: W,
    pace: Pace,
    frame: usize,
    width: usize,
    drawn: bool,
}

impl<W: Write + Send> Spinner<W> {
    /// `width`: the terminal's columns (0 = unknown: lines are not cut).
    pub fn new(out: W, width: usize) -> Self {
        Spinner {
            out,
            pace: Pace::new(Instant::now()),
            frame: 0,
            width,
            drawn: false,
        }
    }

    fn draw(&mut self) {
        let f = FRAMES[self.frame % FRAMES.len()];
        if let Some(line) = self.pace.spinner_line(Instant::now(), f, self.width) {
            // Errors writing progress are not worth failing a build for.
            let _ = write!(self.out, "\r\x1b[2K{line}");
            let _ = self.out.flush();
            self.drawn = true;
        }
    }
}

impl<W: Write + Send> Progress for Spinner<W> {
    fn begin(&mut self, stage: &str, message: &str) {
        self.pace.set(stage, message, true, Instant::now());
    }
    fn stage(&mut self, stage: &str, message: &str) {
        self.pace.set(stage, message, false, Instant::now());
        self.draw();
    }
    fn tick(&mut self) {
        self.frame += 1;
        self.draw();
    }
    fn finish(&mut self) {
        if self.drawn {
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
            self.drawn = false;
        }
    }
}

/// Plain lines (not a terminal): one per change, "still ..." once a second meanwhile.
pub struct PlainLines<W: Write + Send> {
    out: W,
    pace: Pace,
}

impl<W: Write + Send> PlainLines<W> {
    pub fn new(out: W) -> Self {
        PlainLines {
            out,
            pace: Pace::new(Instant::now()),
        }
    }

    fn print_due(&mut self) {
        if let Some(line) = self.pace.plain_line(Instant::now()) {
            let _ = writeln!(self.out, "{line}");
            let _ = self.out.flush();
        }
    }
}

impl<W: Write + Send> Progress for PlainLines<W> {
    fn begin(&mut self, stage: &str, message: &str) {
        self.pace.set(stage, message, true, Instant::now());
    }
    fn stage(&mut self, stage: &str, message: &str) {
        self.pace.set(stage, message, false, Instant::now());
        self.print_due();
    }
    fn tick(&mut self) {
        self.print_due();
    }
    fn finish(&mut self) {}
}

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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn describe_table() {
        assert_eq!(describe("pod pending", ""), "pod pending");
        assert_eq!(
            describe("pod scheduled, creating container", "pulling image"),
            "pod scheduled, creating container: pulling image"
        );
        // The message already says the stage: said once.
        assert_eq!(
            describe(
                "stopping your previous server",
                "Stopping your previous server (session s-0)"
            ),
            "Stopping your previous server (session s-0)"
        );
        assert_eq!(describe("", "just a message"), "just a message");
        assert_eq!(describe("waiting", "  "), "waiting");
        // No char boundary at the stage's length: no panic, joined.
        assert_eq!(describe("a", "é"), "a: é");
    }

    #[test]
    fn fit_table() {
        assert_eq!(fit("abcdef", 0), "abcdef");
        assert_eq!(fit("abcdef", 7), "abcdef");
        assert_eq!(fit("abcdef", 6), "abcd…");
        assert_eq!(fit("⠋ ééééé", 5), "⠋ é…");
        assert_eq!(fit("abc", 1), "…");
    }

    /// Plain mode over time: what is printed at each instant of a wait, ticked every 100 ms.
    fn plain_run(events: &[(u64, &str, &str, bool)], until_ms: u64) -> Vec<(u64, String)> {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        let mut out = Vec::new();
        let mut events = events.iter().peekable();
        for now_ms in (0..=until_ms).step_by(100) {
            let now = t0 + ms(now_ms);
            while let Some((at, stage, message, quiet)) = events.peek() {
                if *at > now_ms {
                    break;
                }
                p.set(stage, message, *quiet, now);
                events.next();
            }
            if let Some(line) = p.plain_line(now) {
                out.push((now_ms, line));
            }
        }
        out
    }

    #[test]
    fn plain_never_silent_for_more_than_a_second_once_shown() {
        let lines = plain_run(
            &[
                (0, "asking the orchestrator", "", true),
                (300, "session recorded", "", false),
                (
                    500,
                    "stopping your previous server",
                    "stopping your previous server (session s-0)",
                    false,
                ),
                (3800, "pod pending", "", false),
            ],
            5000,
        );
        let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            texts,
            [
                "jbazel: [0.3s] session recorded",
                "jbazel: [0.5s] stopping your previous server (session s-0)",
                "jbazel: [1.5s] still stopping your previous server (1s)",
                "jbazel: [2.5s] still stopping your previous server (2s)",
                "jbazel: [3.5s] still stopping your previous server (3s)",
                "jbazel: [3.8s] pod pending",
                "jbazel: [4.8s] still pod pending (1s)",
            ]
        );
        // The promise: no gap over EVERY + TICK between lines once the first was printed.
        for pair in lines.windows(2) {
            assert!(pair[1].0 - pair[0].0 <= 1100, "{pair:?}");
        }
    }

    #[test]
    fn a_quiet_status_shows_only_once_it_lasted() {
        // Answered within QUIET: nothing at all.
        assert!(plain_run(&[(0, "asking the orchestrator", "", true)], 900).is_empty());
        // Lasting: shown at QUIET, then "still" lines.
        let lines = plain_run(&[(0, "asking the orchestrator", "", true)], 2000);
        assert_eq!(
            lines,
            [
                (1000, "jbazel: [1.0s] asking the orchestrator".to_string()),
                (
                    2000,
                    "jbazel: [2.0s] still asking the orchestrator (2s)".to_string()
                ),
            ]
        );
        // A quiet status repeated loudly is shown at once.
        let lines = plain_run(
            &[
                (0, "server", "waiting", true),
                (200, "server", "waiting", false),
            ],
            300,
        );
        assert_eq!(lines, [(200, "jbazel: [0.2s] server: waiting".to_string())]);
    }

    #[test]
    fn plain_prints_a_message_change_but_keeps_the_stage_clock() {
        let lines = plain_run(
            &[
                (
                    0,
                    "orchestrator unavailable",
                    "reconnecting (attempt 1)",
                    false,
                ),
                (
                    100,
                    "orchestrator unavailable",
                    "reconnecting (attempt 2)",
                    false,
                ),
                (
                    100,
                    "orchestrator unavailable",
                    "reconnecting (attempt 2)",
                    false,
                ),
                (
                    1600,
                    "orchestrator unavailable",
                    "reconnecting (attempt 3)",
                    false,
                ),
            ],
            2700,
        );
        let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            texts,
            [
                "jbazel: [0.0s] orchestrator unavailable: reconnecting (attempt 1)",
                "jbazel: [0.1s] orchestrator unavailable: reconnecting (attempt 2)",
                "jbazel: [1.1s] still orchestrator unavailable (1s)",
                "jbazel: [1.6s] orchestrator unavailable: reconnecting (attempt 3)",
                "jbazel: [2.6s] still orchestrator unavailable (2s)",
            ]
        );
    }

    #[test]
    fn spinner_line_has_stage_message_and_seconds_every_tick() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        assert_eq!(p.spinner_line(t0, '⠋', 80), None, "nothing to show yet");
        p.set("asking the orchestrator", "", true, t0);
        assert_eq!(p.spinner_line(t0 + ms(900), '⠋', 80), None, "quiet");
        assert_eq!(
            p.spinner_line(t0 + ms(1000), '⠙', 80).as_deref(),
            Some("⠙ jbazel: asking the orchestrator (1.0s)")
        );
        p.set(
            "pod scheduled, creating container",
            "pulling image",
            false,
            t0 + ms(1200),
        );
        for n in 12..40 {
            let line = p.spinner_line(t0 + ms(n * 100), '⠹', 80);
            let want = format!(
                "⠹ jbazel: pod scheduled, creating container: pulling image ({}.{}s)",
                n / 10,
                n % 10
            );
            assert_eq!(line.as_deref(), Some(want.as_str()));
        }
        // Cut to the terminal's width.
        let line = p.spinner_line(t0 + ms(4000), '⠸', 20).expect("line");
        assert_eq!(line, "⠸ jbazel: pod sche…");
        assert!(p.shown());
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
        let mut p = Spinner::new(b.clone(), 0);
        p.begin("asking the orchestrator", "");
        p.tick();
        assert_eq!(b.text(), "", "a quiet status is not drawn at once");
        p.stage("starting Bazel server", "");
        p.tick();
        p.finish();
        let t = b.text();
        assert!(t.contains("⠙ jbazel: starting Bazel server ("), "{t}");
        assert!(t.contains("⠹ jbazel: starting Bazel server ("), "{t}");
        assert!(t.ends_with("\r\x1b[2K"), "{t:?}");
        assert!(!t.contains('\n'));
    }
}
