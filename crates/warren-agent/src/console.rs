//! The agent's terminal status console, laid out like ngrok's.
//!
//! [`render`] is pure: it turns a [`Snapshot`] into the text of one screen and never reads the
//! clock, the environment or the terminal, so every layout decision can be unit tested. The
//! caller owns the state (status, counters, request log) and formats wall-clock times itself.
//! [`Console`] is the thin part that touches a terminal: alternate screen, cursor, redraws.
//!
//! Widths are counted in `char`s, not display columns: a double-width character (CJK, most
//! emoji) takes two columns but counts as one, so a line holding many of them can still overflow.
//! Counting columns properly needs a Unicode width table, which is not worth a dependency here.

use std::io::{self, Write};
use std::time::Duration;

/// Everything one screen shows. Built by the caller from the agent's state at draw time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// "online", "reconnecting (in 1.2s: edge closed the session)", "connecting", "stopped: ...".
    /// The prefix picks the color, so keep those words first.
    pub session_status: String,
    /// Account name reported by the edge; "" when unknown.
    pub account: String,
    /// Agent version.
    pub version: String,
    /// Edge `host:port` the agent dials.
    pub connect_url: String,
    /// Edge region or node; "" when unknown.
    pub region: String,
    /// Heartbeat round trip; `None` until the first heartbeat comes back.
    pub latency: Option<Duration>,
    /// Address of the local web interface; `None` when it is disabled.
    pub web_interface: Option<String>,
    /// One line per configured endpoint, in configuration order.
    pub endpoints: Vec<EndpointLine>,
    /// Connection figures summed over all endpoints.
    pub conns: ConnStats,
    /// Recent HTTP requests, most recent first. Only as many as fit are shown.
    pub requests: Vec<RequestLine>,
}

/// One "Forwarding" row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointLine {
    /// Public URL; "" while the endpoint is not bound yet.
    pub url: String,
    /// Where the agent forwards to.
    pub upstream: String,
}

/// The "Connections" table, with ngrok's columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnStats {
    /// Connections since start (ngrok's `ttl`).
    pub total: u64,
    /// Connections open now (`opn`).
    pub open: u64,
    /// Connections per second, 1-minute moving average (`rt1`).
    pub rate1: f64,
    /// Connections per second, 5-minute moving average (`rt5`).
    pub rate5: f64,
    /// Median connection duration (`p50`); `None` before any connection closed.
    pub p50: Option<Duration>,
    /// 90th percentile connection duration (`p90`).
    pub p90: Option<Duration>,
}

/// One row under "HTTP Requests".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLine {
    /// Wall-clock time already formatted by the caller (e.g. "14:03:05.123"), because the
    /// renderer must not read the clock or know the local time zone.
    pub time: String,
    /// Request method.
    pub method: String,
    /// Request path (and query). Comes from the internet: control characters are neutralised.
    pub path: String,
    /// Response status; `None` while the request is in flight.
    pub status: Option<u16>,
    /// Reason phrase for `status`, e.g. "OK".
    pub status_text: String,
    /// Time to the response; `None` while in flight.
    pub duration: Option<Duration>,
}

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// Sequence that switches to the alternate screen and hides the cursor, so the console does
/// not scroll the user's shell history away and the cursor does not flicker across redraws.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Undoes [`ENTER`]: back to the normal screen, cursor visible.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

/// ngrok's key column width; narrower terminals get a narrower one (see `key_width`).
const KEY_WIDTH: usize = 30;
/// Width of one cell of the Connections table (value plus padding), as in ngrok.
const CELL_WIDTH: usize = 8;
/// Long methods (custom verbs) are cut so they cannot push the path off screen.
const MAX_METHOD: usize = 10;
/// The path column never gets narrower than this unless the whole line cannot fit anyway.
const MIN_PATH: usize = 12;

/// Renders one screen: at most `height` lines, none longer than `width` chars, each ending
/// with "\n". With `color` false the text contains no escape sequences at all, so it is also
/// fit for logs and dumb terminals.
pub fn render(s: &Snapshot, width: usize, height: usize, color: bool) -> String {
    let mut lines = header(s, width);
    // Requests come last so that a short terminal loses the least useful part first: the
    // oldest requests, then the request list, and only then the bottom of the header.
    let room = height.saturating_sub(lines.len());
    lines.extend(request_lines(&s.requests[..s.requests.len().min(room)], width));
    let mut out = String::new();
    for line in lines.iter().take(height) {
        line.write(&mut out, width, color);
        out.push('\n');
    }
    out
}

/// Everything above the request rows.
fn header(s: &Snapshot, width: usize) -> Vec<Line> {
    let mut lines = Vec::new();
    let (title, hint) = ("warren", "(Ctrl+C to quit)");
    let gap = width.saturating_sub(title.len() + hint.len());
    lines.push(if gap >= 1 {
        Line::plain(format!("{title}{}{hint}", " ".repeat(gap)))
    } else {
        Line::plain(title)
    });
    lines.push(Line::default());

    // The key column gives way (down to its minimum) before a URL would be cut.
    let longest_url = s.endpoints.iter().map(|e| e.url.chars().count()).max().unwrap_or(0);
    let kw = key_width(width).min(width.saturating_sub(longest_url)).max(key_width(0));
    let status_color = if s.session_status.starts_with("online") {
        Some(GREEN)
    } else if s.session_status.starts_with("reconnecting") {
        Some(YELLOW)
    } else if s.session_status.starts_with("stopped") {
        Some(RED)
    } else {
        None
    };
    lines.push(Line::row(kw, "Session Status").span(&s.session_status, status_color));
    lines.push(Line::row(kw, "Account").span(or_dash(&s.account), None));
    lines.push(Line::row(kw, "Version").span(or_dash(&s.version), None));
    // The edge address is more useful than a blank when the edge does not name its region.
    let region = match (s.region.is_empty(), s.connect_url.is_empty()) {
        (false, true) => s.region.clone(),
        (false, false) => format!("{} ({})", s.region, s.connect_url),
        (true, false) => s.connect_url.clone(),
        (true, true) => "-".to_string(),
    };
    lines.push(Line::row(kw, "Region").span(region, None));
    let latency = s.latency.map_or_else(|| "-".to_string(), latency_text);
    lines.push(Line::row(kw, "Latency").span(latency, None));
    let web = s.web_interface.as_deref().unwrap_or("disabled");
    lines.push(Line::row(kw, "Web Interface").span(web, None));
    if s.endpoints.is_empty() {
        lines.push(Line::row(kw, "Forwarding").span("-", None));
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        let key = if i == 0 { "Forwarding" } else { "" };
        let url = if e.url.is_empty() { "(not bound yet)" } else { &e.url };
        let arrow = format!("-> {}", e.upstream);
        // On a narrow terminal the upstream goes on its own line rather than being cut off:
        // it is the half of the line the user typed and looks for.
        if kw + url.chars().count() + 1 + arrow.chars().count() <= width {
            lines.push(Line::row(kw, key).span(format!("{url} {arrow}"), None));
        } else {
            lines.push(Line::row(kw, key).span(url, None));
            lines.push(Line::row(kw, "").span(arrow, None));
        }
    }
    lines.push(Line::default());

    let c = &s.conns;
    let head = ["ttl", "opn", "rt1", "rt5", "p50", "p90"];
    let values = [
        c.total.to_string(),
        c.open.to_string(),
        format!("{:.2}", c.rate1),
        format!("{:.2}", c.rate5),
        ms2(c.p50),
        ms2(c.p90),
    ];
    lines.push(Line::row(kw, "Connections").span(cells(&head), None));
    lines.push(Line::row(kw, "").span(cells(&values), None));
    lines.push(Line::default());

    lines.push(Line::plain("HTTP Requests"));
    lines.push(Line::plain("-------------"));
    lines.push(Line::default());
    lines
}

/// The request rows, with columns sized to the rows shown so paths get the spare width.
fn request_lines(reqs: &[RequestLine], width: usize) -> Vec<Line> {
    let time_w = reqs.iter().map(|r| r.time.chars().count()).max().unwrap_or(0);
    let method_w = reqs.iter().map(|r| r.method.chars().count()).max().unwrap_or(0).min(MAX_METHOD);
    let status_w = reqs.iter().map(|r| status_text(r).chars().count()).max().unwrap_or(0);
    let dur_w = reqs.iter().map(|r| r.duration.map_or(0, |d| duration_text(d).len())).max().unwrap_or(0);
    let path_len = reqs.iter().map(|r| r.path.chars().count()).max().unwrap_or(0);
    // Four single-space separators between the five columns.
    let fixed = time_w + method_w + status_w + dur_w + 4;
    let path_w = path_len.max(MIN_PATH).min(width.saturating_sub(fixed)).max(1);

    reqs.iter()
        .map(|r| {
            let status = status_text(r);
            let color = match r.status {
                Some(400..=499) => Some(YELLOW),
                Some(500..=599) => Some(RED),
                _ => None,
            };
            let dur = r.duration.map(duration_text).unwrap_or_default();
            Line::default()
                .span(pad(&r.time, time_w), None)
                .span(" ", None)
                .span(pad(&r.method, method_w), None)
                .span(" ", None)
                // The path is cut inside its column so status and duration stay visible.
                .span(pad(&r.path, path_w), None)
                .span(" ", None)
                .span(status.clone(), color)
                .span(" ".repeat(status_w - status.chars().count() + 1), None)
                .span(format!("{dur:>dur_w$}"), None)
        })
        .collect()
}

/// "200 OK", or "" while in flight.
fn status_text(r: &RequestLine) -> String {
    match r.status {
        Some(code) if r.status_text.is_empty() => code.to_string(),
        Some(code) => format!("{code} {}", r.status_text),
        None => String::new(),
    }
}

/// ngrok's 30-column key, shrunk on narrow terminals so values keep at least half the line.
fn key_width(width: usize) -> usize {
    KEY_WIDTH.min(width.saturating_sub(KEY_WIDTH)).max("Session Status".len() + 2)
}

fn cells(values: &[impl AsRef<str>]) -> String {
    let mut s = String::new();
    for v in values {
        let v = v.as_ref();
        s.push_str(v);
        // At least one space even when a figure outgrows its cell, so numbers never merge.
        s.push_str(&" ".repeat(CELL_WIDTH.saturating_sub(v.len()).max(1)));
    }
    s.trim_end().to_string()
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Milliseconds with two decimals, as ngrok prints p50/p90; "0.00" when unknown.
fn ms2(d: Option<Duration>) -> String {
    format!("{:.2}", d.map_or(0.0, |d| d.as_secs_f64() * 1000.0))
}

/// Whole milliseconds unless below one, where the fraction is all there is to see.
fn latency_text(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 { format!("{ms:.2}ms") } else { format!("{ms:.0}ms") }
}

/// "12.3ms" below a second, "1.23s" below a minute, "2m05s" beyond.
fn duration_text(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1}ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.2}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Cuts `s` to `w` chars (the last one an ellipsis when cut) and pads it to exactly `w`.
fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        format!("{s}{}", " ".repeat(w - n))
    } else if w == 0 {
        String::new()
    } else {
        let mut out: String = s.chars().take(w - 1).collect();
        out.push('…');
        out
    }
}

/// `s` with every character that could steer a terminal (escape sequences, other controls,
/// bidirectional overrides) replaced by `?`: for line output of text that came from the edge
/// or the network (URLs, error messages).
pub fn terminal_safe(s: &str) -> String {
    s.chars().map(|c| if unsafe_char(c) && c != '\n' { '?' } else { c }).collect()
}

/// Characters that could steer the terminal or reorder what the operator reads. Paths, reason
/// phrases and account names come from the network, so an escape sequence in a request path
/// would otherwise run in the operator's terminal.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// One screen line as colored spans, so truncation can count only visible chars and never
/// cut through an escape sequence.
#[derive(Default)]
struct Line {
    spans: Vec<(String, Option<&'static str>)>,
}

impl Line {
    fn plain(s: impl Into<String>) -> Line {
        Line::default().span(s, None)
    }

    /// A key/value row: the key padded to the key column.
    fn row(key_w: usize, key: &str) -> Line {
        Line::plain(pad(key, key_w))
    }

    fn span(mut self, s: impl Into<String>, color: Option<&'static str>) -> Line {
        self.spans.push((s.into(), color));
        self
    }

    /// Appends the visible text, cut to `width` chars with a trailing ellipsis.
    fn write(&self, out: &mut String, width: usize, color: bool) {
        let mut chars: Vec<(char, Option<&'static str>)> = self
            .spans
            .iter()
            .flat_map(|(s, c)| s.chars().map(move |ch| (if unsafe_char(ch) { '?' } else { ch }, *c)))
            .collect();
        // Trailing blanks (padding of an empty last column) would only make lines longer.
        while chars.last().is_some_and(|(ch, _)| ch.is_whitespace()) {
            chars.pop();
        }
        if chars.len() > width {
            chars.truncate(width.saturating_sub(1));
            if width > 0 {
                chars.push(('…', None));
            }
        }
        let mut current = None;
        for (ch, c) in chars {
            let c = if color { c } else { None };
            if c != current {
                if current.is_some() {
                    out.push_str(RESET);
                }
                if let Some(code) = c {
                    out.push_str(code);
                }
                current = c;
            }
            out.push(ch);
        }
        if current.is_some() {
            out.push_str(RESET);
        }
    }
}

/// Draws frames of [`render`] onto a terminal, in the alternate screen.
///
/// Each frame overwrites the previous one in place (home, then clear to end of each line and
/// below the last) rather than clearing the whole screen first, which would flicker.
pub struct Console {
    out: Box<dyn Write + Send>,
    color: bool,
    /// True between the first draw and `finish`, so the terminal is restored exactly once.
    active: bool,
}

impl Console {
    /// A console writing to `out` (normally stdout); `color` enables ANSI colors.
    pub fn new(out: impl Write + Send + 'static, color: bool) -> Console {
        Console { out: Box::new(out), color, active: false }
    }

    /// Draws one frame sized `width` x `height`.
    pub fn draw(&mut self, s: &Snapshot, width: usize, height: usize) -> io::Result<()> {
        let mut frame = String::new();
        if !self.active {
            frame.push_str(ENTER);
            self.active = true;
        }
        frame.push_str("\x1b[H");
        let text = render(s, width, height, self.color);
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            frame.push_str(line);
            frame.push_str("\x1b[K");
            // No newline after the last line: on the terminal's bottom row it would scroll the
            // whole frame up by one and push the title off screen.
            if lines.peek().is_some() {
                frame.push('\n');
            }
        }
        frame.push_str("\x1b[J");
        // One write per frame, so the terminal never shows half a frame.
        self.out.write_all(frame.as_bytes())?;
        self.out.flush()
    }

    /// Restores the terminal: leaves the alternate screen and shows the cursor. Errors are
    /// ignored because this runs on the way out, when the terminal may already be gone.
    pub fn finish(&mut self) {
        if self.active {
            self.active = false;
            let _ = self.out.write_all(LEAVE.as_bytes());
            let _ = self.out.flush();
        }
    }
}

impl Drop for Console {
    /// A panic or early return must not leave the user's terminal in the alternate screen.
    fn drop(&mut self) {
        self.finish();
    }
}

/// Terminal size as (columns, lines) from `COLUMNS` and `LINES`, or `None` when either is
/// missing or not a positive number; callers then assume 80x24.
///
/// Asking the terminal itself needs an ioctl, which needs unsafe code, and the workspace
/// forbids it. Shells usually do not export these variables, so expect `None` unless the user
/// (or a wrapper) sets them.
pub fn terminal_size() -> Option<(usize, usize)> {
    size_from(std::env::var("COLUMNS").ok(), std::env::var("LINES").ok())
}

fn size_from(columns: Option<String>, lines: Option<String>) -> Option<(usize, usize)> {
    let parse = |v: Option<String>| v?.trim().parse::<usize>().ok().filter(|&n| n > 0);
    Some((parse(columns)?, parse(lines)?))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn req(i: usize, status: Option<u16>, text: &str) -> RequestLine {
        RequestLine {
            time: format!("14:03:{:02}.123", i % 60),
            method: "GET".into(),
            path: format!("/items/{i}"),
            status,
            status_text: text.into(),
            duration: status.map(|_| Duration::from_micros(12_300)),
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            session_status: "online".into(),
            account: "alice".into(),
            version: "0.1.0".into(),
            connect_url: "edge.example.com:4443".into(),
            region: "eu-1".into(),
            latency: Some(Duration::from_millis(23)),
            web_interface: Some("http://127.0.0.1:4040".into()),
            endpoints: vec![
                EndpointLine {
                    url: "https://a-very-long-subdomain-name.tunnel.example.com".into(),
                    upstream: "http://localhost:8080".into(),
                },
                EndpointLine {
                    url: "tcp://tunnel.example.com:20001".into(),
                    upstream: "localhost:22".into(),
                },
            ],
            conns: ConnStats {
                total: 42,
                open: 3,
                rate1: 0.5,
                rate5: 0.1234,
                p50: Some(Duration::from_micros(5_010)),
                p90: None,
            },
            requests: vec![
                req(0, Some(200), "OK"),
                req(1, Some(404), "Not Found"),
                req(2, Some(502), "Bad Gateway"),
                req(3, None, ""),
            ],
        }
    }

    fn line_count(text: &str) -> usize {
        text.matches('\n').count()
    }

    #[test]
    fn render_shows_endpoints_account_and_connection_figures() {
        let s = snapshot();
        let out = render(&s, 120, 40, false);
        for e in &s.endpoints {
            assert!(out.contains(&format!("{} -> {}", e.url, e.upstream)), "{out}");
        }
        assert!(out.contains("alice"), "{out}");
        let conn = out.lines().position(|l| l.starts_with("Connections")).expect("Connections row");
        let head: Vec<&str> = out.lines().nth(conn).unwrap().split_whitespace().collect();
        assert_eq!(head, ["Connections", "ttl", "opn", "rt1", "rt5", "p50", "p90"]);
        let values: Vec<&str> = out.lines().nth(conn + 1).unwrap().split_whitespace().collect();
        assert_eq!(values, ["42", "3", "0.50", "0.12", "5.01", "0.00"]);
        // Values sit under their headings.
        let head_line = out.lines().nth(conn).unwrap();
        let value_line = out.lines().nth(conn + 1).unwrap();
        assert_eq!(head_line.find("rt1"), value_line.find("0.50"));
        assert!(out.starts_with("warren"));
        assert!(out.lines().next().unwrap().ends_with("(Ctrl+C to quit)"));
        assert_eq!(out.lines().next().unwrap().chars().count(), 120);
    }

    #[test]
    fn render_shows_requests_with_status_and_in_flight_without() {
        let out = render(&snapshot(), 100, 40, false);
        let lines: Vec<&str> = out.lines().collect();
        let first = lines.iter().position(|l| l.starts_with("HTTP Requests")).unwrap();
        assert_eq!(lines[first + 1], "-------------");
        let rows = &lines[first + 3..];
        assert_eq!(rows.len(), 4);
        assert!(rows[0].starts_with("14:03:00.123 GET /items/0"), "{}", rows[0]);
        assert!(rows[0].contains(" 200 OK "), "{}", rows[0]);
        assert!(rows[0].ends_with("12.3ms"), "{}", rows[0]);
        assert!(rows[2].contains("502 Bad Gateway"));
        // In flight: no status, no duration.
        assert_eq!(rows[3].trim_end(), "14:03:03.123 GET /items/3");
        // Status column is aligned across rows.
        assert_eq!(rows[0].find("200"), rows[1].find("404"));
    }

    #[test]
    fn narrow_render_truncates_with_ellipsis_and_never_exceeds_width() {
        let out = render(&snapshot(), 40, 40, false);
        for line in out.lines() {
            assert!(line.chars().count() <= 40, "{} chars: {line:?}", line.chars().count());
        }
        assert!(out.contains('…'), "{out}");
        // Multi-byte chars count once each.
        let mut s = snapshot();
        s.account = "ü".repeat(100);
        let out = render(&s, 40, 40, false);
        let account = out.lines().find(|l| l.starts_with("Account")).unwrap();
        assert_eq!(account.chars().count(), 40);
        assert!(account.ends_with("ü…"));
        // Colors do not count towards the width.
        for line in render(&snapshot(), 40, 40, true).lines() {
            let visible = line.replace(GREEN, "").replace(YELLOW, "").replace(RED, "").replace(RESET, "");
            assert!(visible.chars().count() <= 40, "{line:?}");
        }
    }

    #[test]
    fn at_80_columns_a_long_url_keeps_its_whole_upstream_on_the_next_line() {
        let out = render(&snapshot(), 80, 40, false);
        for line in out.lines() {
            assert!(line.chars().count() <= 80, "{} chars: {line:?}", line.chars().count());
        }
        let lines: Vec<&str> = out.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("Forwarding")).unwrap();
        assert!(lines[at].ends_with("https://a-very-long-subdomain-name.tunnel.example.com"), "{out}");
        assert_eq!(lines[at + 1].trim(), "-> http://localhost:8080", "{out}");
        // A line that fits stays one line.
        assert!(lines[at + 2].trim() == "tcp://tunnel.example.com:20001 -> localhost:22", "{out}");
        assert!(!out.contains('…'), "nothing is cut at 80 columns: {out}");
    }

    #[test]
    fn short_terminal_shows_fewer_requests_and_never_more_lines_than_height() {
        let mut s = snapshot();
        s.requests = (0..20).map(|i| req(i, Some(200), "OK")).collect();
        let count = |out: &str| out.lines().filter(|l| l.starts_with("14:03:")).count();

        let out = render(&s, 80, 12, false);
        assert!(line_count(&out) <= 12, "{out}");
        assert!(count(&out) < 20);

        let full = render(&s, 80, 200, false);
        assert_eq!(count(&full), 20);
        let header = line_count(&full) - 20;
        // Five rows of room: the five most recent requests.
        let out = render(&s, 80, header + 5, false);
        assert_eq!(line_count(&out), header + 5);
        assert_eq!(count(&out), 5);
        assert!(out.contains("/items/4 ") && !out.contains("/items/5 "), "{out}");

        for h in 0..header + 3 {
            assert!(line_count(&render(&s, 80, h, false)) <= h);
        }
    }

    #[test]
    fn no_color_output_has_no_escape_bytes() {
        let mut s = snapshot();
        s.requests[0].path = "/\x1b]0;pwned\x07\x1b[2J".into();
        s.account = "evil\x1b[31m".into();
        for status in ["online", "reconnecting (in 1.2s: edge closed the session)", "stopped: auth"] {
            s.session_status = status.into();
            let out = render(&s, 80, 40, false);
            assert!(!out.contains('\x1b'), "{out:?}");
        }
    }

    #[test]
    fn network_text_cannot_inject_escapes_even_with_color() {
        let mut s = snapshot();
        s.requests[0].path = "/\x1b[2Jx".into();
        let out = render(&s, 80, 40, true);
        assert!(!out.contains("\x1b[2J"), "{out:?}");
        assert!(out.contains("/?[2Jx"), "{out:?}");
    }

    #[test]
    fn color_marks_5xx_red_4xx_yellow_and_online_green() {
        let out = render(&snapshot(), 100, 40, true);
        assert!(out.contains(&format!("{RED}502 Bad Gateway{RESET}")), "{out:?}");
        assert!(out.contains(&format!("{YELLOW}404 Not Found{RESET}")), "{out:?}");
        assert!(out.contains(&format!("{GREEN}online{RESET}")), "{out:?}");
        assert!(!out.contains(&format!("{RED}200")), "{out:?}");

        let mut s = snapshot();
        s.session_status = "reconnecting (in 1.2s: edge closed the session)".into();
        assert!(render(&s, 100, 40, true).contains(&format!("{YELLOW}reconnecting")));
        s.session_status = "stopped: authentication failed".into();
        assert!(render(&s, 100, 40, true).contains(&format!("{RED}stopped")));
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn console_enters_alternate_screen_once_and_finish_leaves_it() {
        let buf = Shared::default();
        let mut console = Console::new(buf.clone(), false);
        let mut s = snapshot();
        s.requests = (0..30).map(|i| req(i, Some(200), "OK")).collect();
        console.draw(&s, 80, 24).unwrap();
        console.draw(&s, 80, 24).unwrap();
        let out = buf.text();
        assert!(out.starts_with("\x1b[?1049h\x1b[?25l\x1b[H"), "{out:?}");
        assert_eq!(out.matches("\x1b[?1049h").count(), 1);
        assert_eq!(out.matches("\x1b[H").count(), 2);
        assert!(out.contains("warren"));
        assert!(out.contains("\x1b[K\n"));
        assert!(out.ends_with("\x1b[K\x1b[J"), "{out:?}");
        // A full-height frame must not scroll: 24 lines need only 23 newlines.
        let frame = &out[out.rfind("\x1b[H").unwrap()..];
        assert_eq!(frame.matches('\n').count(), 23);
        assert!(!out.contains("\x1b[?1049l"));

        console.finish();
        assert!(buf.text().ends_with("\x1b[?1049l"));
        assert!(buf.text().contains("\x1b[?25h"));
        drop(console);
        assert_eq!(buf.text().matches("\x1b[?1049l").count(), 1, "drop after finish must not restore again");
    }

    #[test]
    fn console_restores_the_terminal_on_drop() {
        let buf = Shared::default();
        let mut console = Console::new(buf.clone(), true);
        console.draw(&snapshot(), 80, 24).unwrap();
        drop(console);
        assert!(buf.text().ends_with("\x1b[?1049l"));

        // Never drawn: nothing to restore, nothing written.
        let buf = Shared::default();
        drop(Console::new(buf.clone(), true));
        assert!(buf.text().is_empty());
    }

    #[test]
    fn terminal_size_needs_both_variables() {
        assert_eq!(size_from(Some("120".into()), Some("40".into())), Some((120, 40)));
        assert_eq!(size_from(Some("120".into()), None), None);
        assert_eq!(size_from(Some("0".into()), Some("40".into())), None);
        assert_eq!(size_from(Some("wide".into()), Some("40".into())), None);
    }

    #[test]
    fn text_from_the_edge_cannot_steer_the_terminal() {
        let hostile = "https://a.example\u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}gpj.exe\r";
        let safe = terminal_safe(hostile);
        assert!(!safe.contains(['\u{1b}', '\u{7}', '\u{202e}', '\r']), "{safe:?}");
        assert!(safe.starts_with("https://a.example?]0;owned"), "{safe:?}");
    }
}
