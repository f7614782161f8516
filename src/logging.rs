//! Log output: text or JSON lines on stderr. Under systemd, when stderr is the journal's
//! stream, every line starts with its sd-daemon priority (`<3>` error ... `<7>` debug), so
//! `journalctl -p err` finds the errors, and text lines carry no timestamp (the journal adds its
//! own). [`writer_config`] decides (pure, table-tested); [`init`] only looks at the process and
//! installs the subscriber.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Environment variable that sets `--log-format`.
pub const ENV_LOG_FORMAT: &str = "REDIS_FAILOVER_PROXY_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (`LEVEL target: message key=value ...`).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `spans`).
    Json,
}

/// What the stderr writer does, decided by [`writer_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// JSON objects instead of text.
    pub json: bool,
    /// Start each line with the sd-daemon priority `<N>` (stderr is the journal).
    pub priority_prefix: bool,
    /// Write a timestamp into each line.
    pub timestamps: bool,
    /// Colour (text on a terminal only).
    pub ansi: bool,
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, as systemd sets it for a unit whose stderr is the
/// journal) names stderr's file, given as (device, inode). A process that inherited the variable
/// but had its stderr redirected elsewhere does not match.
pub fn journal_stream_matches(journal_stream: &str, stderr: (u64, u64)) -> bool {
    let Some((dev, ino)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    matches!((dev.parse::<u64>(), ino.parse::<u64>()), (Ok(d), Ok(i)) if (d, i) == stderr)
}

/// The writer for `format`, given `JOURNAL_STREAM` (if set), stderr's (device, inode) (if it
/// is open) and whether stderr is a terminal.
pub fn writer_config(
    format: LogFormat,
    journal_stream: Option<&str>,
    stderr: Option<(u64, u64)>,
    stderr_is_terminal: bool,
) -> WriterConfig {
    let journald = match (journal_stream, stderr) {
        (Some(js), Some(id)) => journal_stream_matches(js, id),
        _ => false,
    };
    let json = format == LogFormat::Json;
    WriterConfig {
        json,
        // journald strips the prefix, so a JSON line reaches the journal as clean JSON too.
        priority_prefix: journald,
        // JSON keeps its timestamp: a shipper reading the journal's MESSAGE field wants it.
        timestamps: json || !journald,
        ansi: !json && !journald && stderr_is_terminal,
    }
}

/// The sd-daemon priority of a level (`sd-daemon(3)`: 3 error, 4 warning, 6 info, 7 debug).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Set once [`init`] found stderr to be the journal.
static JOURNALD: AtomicBool = AtomicBool::new(false);

/// The prefix for a line written to stderr outside `tracing` that reports a fatal error: `<3>`
/// under the journal, else nothing.
pub fn error_prefix() -> &'static str {
    if JOURNALD.load(Ordering::Relaxed) {
        "<3>"
    } else {
        ""
    }
}

/// stderr's (device, inode), if it is open.
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Installs the global subscriber: level filter from `RUST_LOG` (default `info`), lines in
/// `format` on stderr, decided by [`writer_config`]. Returns the decision.
pub fn init(format: LogFormat) -> WriterConfig {
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let cfg = writer_config(
        format,
        journal_stream.as_deref(),
        stderr_id(),
        std::io::stderr().is_terminal(),
    );
    JOURNALD.store(cfg.priority_prefix, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Its fallback is eprintln!, which panics when stderr is gone (e.g. a closed pipe) and
    // would take the signal task with it.
    let base = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(cfg.ansi)
        .log_internal_errors(false);
    let layer = match (cfg.json, cfg.priority_prefix, cfg.timestamps) {
        (true, true, _) => base.json().map_event_format(Prioritized).boxed(),
        (true, false, _) => base.json().boxed(),
        (false, true, true) => base.map_event_format(Prioritized).boxed(),
        (false, true, false) => base.without_time().map_event_format(Prioritized).boxed(),
        (false, false, _) => base.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    cfg
}

/// Writes the event's sd-daemon priority before what the inner format writes.
struct Prioritized<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parsing() {
        let rows: &[(&str, (u64, u64), bool)] = &[
            ("8:12345", (8, 12345), true),
            (" 8:12345\n", (8, 12345), true),
            ("8:12345", (8, 12346), false),
            ("9:12345", (8, 12345), false),
            ("8", (8, 12345), false),
            ("", (0, 0), false),
            ("a:b", (0, 0), false),
            ("8:12345:1", (8, 12345), false),
        ];
        for (var, id, want) in rows {
            assert_eq!(journal_stream_matches(var, *id), *want, "{var:?} {id:?}");
        }
    }

    #[test]
    fn writer_decisions() {
        use LogFormat::*;
        let id = Some((8, 99));
        // (format, JOURNAL_STREAM, stderr id, terminal) -> (json, prefix, timestamps, ansi)
        type Row<'a> = (
            LogFormat,
            Option<&'a str>,
            Option<(u64, u64)>,
            bool,
            [bool; 4],
        );
        let rows: &[Row] = &[
            (Text, None, id, false, [false, false, true, false]),
            (Text, None, id, true, [false, false, true, true]),
            (Text, Some("8:99"), id, false, [false, true, false, false]),
            // A terminal and the journal cannot both be stderr; the journal wins.
            (Text, Some("8:99"), id, true, [false, true, false, false]),
            // Inherited variable, stderr redirected elsewhere: not the journal.
            (Text, Some("8:98"), id, false, [false, false, true, false]),
            (Text, Some("8:99"), None, false, [false, false, true, false]),
            (Json, None, id, true, [true, false, true, false]),
            (Json, Some("8:99"), id, false, [true, true, true, false]),
        ];
        for (format, js, sid, tty, [json, prefix, ts, ansi]) in rows {
            let got = writer_config(*format, *js, *sid, *tty);
            assert_eq!(
                got,
                WriterConfig {
                    json: *json,
                    priority_prefix: *prefix,
                    timestamps: *ts,
                    ansi: *ansi
                },
                "{format:?} {js:?} {sid:?} {tty}"
            );
        }
    }

    #[test]
    fn priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
