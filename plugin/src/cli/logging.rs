//! Logging for every daffe command: where log lines go and how they look.
//!
//! - Colour codes only when stderr is a terminal (and `NO_COLOR` is unset), so
//!   journald, dockerd's log and files get plain text.
//! - `DAFFE_LOG_FORMAT=json`: one JSON object per line, for log shippers.
//! - The AWS SDK's own warnings (targets `aws_*`: "failed to load region from
//!   IMDS", credential-chain misses, each a kilobyte of nested debug output)
//!   are held back, cut to one line, and printed after daffe's own error or
//!   warning, which says what failed. A run that succeeds never shows them. A
//!   `DAFFE_LOG` filter that names an `aws` target turns this off and shows
//!   the SDK's events as they come, in full, for debugging.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Longest AWS SDK note printed: AWS's message and error code fit; the nested
/// `Debug` dump of the connector error that follows them does not.
const MAX_NOTE: usize = 240;

/// How log lines are written (`DAFFE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
}

/// Parses `DAFFE_LOG_FORMAT`: unset or empty is text.
pub(crate) fn parse_format(value: Option<&str>) -> Result<Format, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(Format::Text),
        Some(v) if v.eq_ignore_ascii_case("text") => Ok(Format::Text),
        Some(v) if v.eq_ignore_ascii_case("json") => Ok(Format::Json),
        Some(v) => Err(format!(
            "DAFFE_LOG_FORMAT={v:?} is neither \"text\" nor \"json\"; logging as text"
        )),
    }
}

/// Events of the AWS SDK and its runtime.
fn is_sdk_target(target: &str) -> bool {
    target.starts_with("aws_")
}

/// One line of at most [`MAX_NOTE`] characters: the first line of `text`,
/// whitespace runs collapsed.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let mut out = first.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().count() > MAX_NOTE {
        out = out.chars().take(MAX_NOTE).collect();
        out.push_str("...");
    }
    out
}

/// The held-back SDK warning: the latest one, and how many came.
#[derive(Debug, Default)]
struct Pending {
    last: Option<String>,
    count: u32,
}

impl Pending {
    fn take(&mut self) -> Option<String> {
        let last = self.last.take()?;
        let n = std::mem::take(&mut self.count);
        Some(if n > 1 {
            format!("{last} ({n} warnings, the last shown)")
        } else {
            last
        })
    }
}

/// Collects an event's message and fields as `message k=v ...`.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        } else {
            self.0.push_str(&format!("{}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

/// Holds SDK warnings back and writes the pending one after daffe's next
/// warning or error. It sits above the formatting layer, so it sees an event
/// after that layer has printed it.
struct SdkNotes<W> {
    pending: Arc<Mutex<Pending>>,
    format: Format,
    writer: W,
}

impl<S: Subscriber, W: for<'w> MakeWriter<'w> + 'static> Layer<S> for SdkNotes<W> {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return;
        }
        if is_sdk_target(meta.target()) {
            let mut text = Text::default();
            event.record(&mut text);
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.last = Some(one_line(&text.0));
            p.count += 1;
        } else {
            let note = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(note) = note {
                write_note(&mut self.writer.make_writer(), self.format, &note);
            }
        }
    }
}

fn write_note(out: &mut impl Write, format: Format, note: &str) {
    let line = match format {
        Format::Text => format!("  AWS SDK: {note}\n"),
        Format::Json => format!(
            "{}\n",
            serde_json::json!({
                "level": "WARN",
                "target": "aws_sdk",
                "fields": { "message": note },
            })
        ),
    };
    // Logging must never fail the command.
    let _ = out.write_all(line.as_bytes());
}

/// The process's logging set-up, for [`flush_sdk_note`].
struct Installed {
    pending: Arc<Mutex<Pending>>,
    format: Format,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Builds the subscriber: `filter` (tracing `EnvFilter` syntax) on what is
/// printed, lines to `writer`, colour codes only if `ansi`.
fn build<W>(
    filter: &str,
    format: Format,
    ansi: bool,
    writer: W,
    pending: Arc<Mutex<Pending>>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
    let defer = !filter.contains("aws");
    let shown =
        EnvFilter::new(filter).and(filter_fn(move |m| !(defer && is_sdk_target(m.target()))));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        .with_ansi(ansi && format == Format::Text);
    match format {
        Format::Text => Box::new(
            tracing_subscriber::registry()
                .with(fmt.with_filter(shown))
                .with(notes_layer(defer, pending, format, writer))
                .with(Recent.with_filter(LevelFilter::WARN)),
        ),
        Format::Json => Box::new(
            tracing_subscriber::registry()
                .with(fmt.json().with_filter(shown))
                .with(notes_layer(defer, pending, format, writer))
                .with(Recent.with_filter(LevelFilter::WARN)),
        ),
    }
}

/// Keeps daffe's own warnings and errors for `daffe status` (the last few,
/// see [`crate::control::status`]); the SDK's are noise there.
struct Recent;

impl<S: Subscriber> Layer<S> for Recent {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || is_sdk_target(meta.target()) {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        crate::metrics::daemon().log_event(meta.level().as_str());
        crate::control::status::remember(meta.level().as_str(), one_line(&text.0));
    }
}

/// The notes layer, if SDK events are held back. Only warnings and errors
/// reach it: it neither sees nor slows down the SDK's debug chatter.
fn notes_layer<S, W>(
    on: bool,
    pending: Arc<Mutex<Pending>>,
    format: Format,
    writer: W,
) -> Option<Filtered<SdkNotes<W>, LevelFilter, S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    on.then(|| {
        SdkNotes {
            pending,
            format,
            writer,
        }
        .with_filter(LevelFilter::WARN)
    })
}

/// Logs to stderr; `DAFFE_LOG` (or `RUST_LOG`) takes a tracing filter,
/// default `info`, overridden by `-q`/`-v` (see [`super::output`]);
/// `DAFFE_LOG_FORMAT` is `text` (default) or `json`. `json_lines` forces
/// JSON (with `--json-progress`, every line on stderr is one JSON object).
/// The first call sets logging up; later ones do nothing.
pub(crate) fn init(json_lines: bool) {
    use std::io::IsTerminal;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = super::output::process_log_filter();
        let (format, problem) =
            match parse_format(std::env::var("DAFFE_LOG_FORMAT").ok().as_deref()) {
                Ok(f) => (f, None),
                Err(e) => (Format::Text, Some(e)),
            };
        let format = if json_lines { Format::Json } else { format };
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let subscriber = build(&filter, format, ansi, std::io::stderr, pending.clone());
        if tracing::subscriber::set_global_default(subscriber).is_ok() {
            let _ = INSTALLED.set(Installed { pending, format });
        }
        if let Some(p) = problem {
            tracing::warn!("{p}");
        }
    });
}

/// Writes the held-back SDK warning, if any, to stderr: called right after a
/// command printed its error.
pub(crate) fn flush_sdk_note() {
    let Some(inst) = INSTALLED.get() else {
        return;
    };
    let note = inst
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(note) = note {
        write_note(&mut std::io::stderr(), inst.format, &note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        let cases = [
            (None, Some(Format::Text)),
            (Some(""), Some(Format::Text)),
            (Some("text"), Some(Format::Text)),
            (Some("JSON"), Some(Format::Json)),
            (Some(" json "), Some(Format::Json)),
            (Some("xml"), None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_format(input).ok(), want, "{input:?}");
        }
    }

    #[test]
    fn notes_are_one_short_line() {
        assert_eq!(one_line("a  b\n  c"), "a b");
        let long = "x".repeat(1000);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), MAX_NOTE + 3);
        assert!(cut.ends_with("..."));
        // Multi-byte text is cut on a character, not a byte.
        assert_eq!(one_line(&"é".repeat(300)).chars().count(), MAX_NOTE + 3);
        assert!(is_sdk_target("aws_config::imds::region"));
        assert!(is_sdk_target("aws_smithy_runtime::client"));
        assert!(!is_sdk_target("daffe_plugin::cli"));
    }

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Two SDK warnings with multi-line payloads, then daffe's error.
    fn emit() {
        let dump = format!(
            "dispatch failure\n{}",
            "Debug { nested: true } ".repeat(100)
        );
        tracing::warn!(target: "aws_config::imds::region", err = %dump, "failed to load region from IMDS");
        tracing::warn!(target: "aws_config::imds::region", err = %dump, "failed to load region from IMDS");
        tracing::info!("unrelated progress");
        tracing::error!("StartSnapshot failed: no credentials");
    }

    fn run(filter: &str, format: Format, ansi: bool) -> String {
        let buf = Buf::default();
        let sub = build(filter, format, ansi, buf.clone(), Arc::default());
        tracing::subscriber::with_default(sub, emit);
        buf.text()
    }

    #[test]
    fn sdk_warnings_come_after_the_error_on_one_line() {
        let out = run("info", Format::Text, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].contains("unrelated progress"), "{out}");
        assert!(
            lines[1].contains("ERROR") && lines[1].contains("no credentials"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("  AWS SDK: failed to load region from IMDS err=dispatch failure"),
            "{out}"
        );
        assert!(lines[2].ends_with("(2 warnings, the last shown)"), "{out}");
        assert!(!out.contains('\u{1b}'), "colour codes in {out:?}");
    }

    #[test]
    fn json_lines_are_json_and_ansi_is_opt_in() {
        let out = run("info", Format::Json, true);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["level"], "ERROR");
        assert_eq!(lines[2]["target"], "aws_sdk");
        assert!(!out.contains('\u{1b}'));
        assert!(run("info", Format::Text, true).contains('\u{1b}'));
    }

    #[test]
    fn a_filter_naming_aws_shows_the_sdk_in_full() {
        let out = run("info,aws_config=debug", Format::Text, false);
        assert!(
            out.matches("failed to load region from IMDS").count() == 2,
            "{out}"
        );
        assert!(!out.contains("AWS SDK:"), "{out}");
        assert!(out.contains("Debug { nested: true }"), "{out}");
    }
}
