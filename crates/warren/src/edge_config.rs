//! `warren edge --config FILE`: every `warren edge` flag as a key of a YAML file
//! (`connect_addr: 0.0.0.0:4443`, `trusted_proxy: [10.0.0.0/8]`, `no_http: true`), so an edge
//! runs as a service from one file. The file is read once, before the flags are parsed: a key
//! whose flag the command line or a `WARREN_*` variable set is skipped, so those win over the
//! file (a repeatable flag given on the command line replaces the file's list). Keys are the
//! flags' names, with `_` or `-`. Unknown keys, wrong types and values a flag would refuse are
//! reported together, each with the file, line and column, and the edge does not start.

use std::ffi::OsString;
use std::path::Path;

use anyhow::bail;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use serde_json::Value;

/// Flags of `warren edge` that are not settings (they say where the settings are, or what to
/// do with them).
const NOT_SETTINGS: [&str; 3] = ["config", "check", "help"];

/// The command line with the file's settings added as flags it did not set: `argv` is
/// the whole command line, `edge` the `warren edge` command (for its flags) and `matches`
/// what the command line alone gave (to know which flags it set).
pub(crate) fn merged_args(
    argv: &[OsString],
    edge: &Command,
    matches: &ArgMatches,
    file: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    let entries = warren_agent::locate::top_level(&text).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    let mut problems = Vec::new();
    let mut from_file: Vec<OsString> = Vec::new();
    for (key, (line, col), value) in entries {
        let at = format!("{shown}:{line}:{col}");
        let wanted = key.replace('-', "_");
        let arg = edge.get_arguments().find(|a| {
            a.get_long().is_some_and(|l| l.replace('-', "_") == wanted)
                && !NOT_SETTINGS.contains(&a.get_id().as_str())
        });
        let Some(arg) = arg else {
            let known: Vec<String> = edge
                .get_arguments()
                .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()))
                .filter_map(|a| a.get_long().map(|l| l.replace('-', "_")))
                .collect();
            let nearest = known
                .iter()
                .map(|k| (crate::api_cli::edit_distance(&wanted, k), k))
                .filter(|(d, k)| *d <= 3.max(k.len() / 3))
                .min_by_key(|(d, _)| *d);
            problems.push(match nearest {
                Some((_, k)) => format!("{at}: unknown key {key:?}; did you mean {k}?"),
                None => format!("{at}: unknown key {key:?}; the keys are the flags of `warren edge --help`"),
            });
            continue;
        };
        let id = arg.get_id().as_str();
        // The command line (or a WARREN_* variable) has the last word.
        if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().expect("found by its long name"));
        let values: Vec<String> = match (arg.get_action(), &value) {
            (_, Value::Null) => continue,
            (ArgAction::SetTrue, Value::Bool(true)) => {
                from_file.push(flag.into());
                continue;
            }
            (ArgAction::SetTrue, Value::Bool(false)) => continue,
            (ArgAction::SetTrue, other) => {
                problems.push(format!("{at}: {key}: expected true or false, found {}", kind(other)));
                continue;
            }
            (ArgAction::Append, Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match scalar(item) {
                        Some(s) => out.push(s),
                        None => problems.push(format!(
                            "{at}: {key}: expected a list of values, found a {} in it",
                            kind(item)
                        )),
                    }
                }
                out
            }
            (_, Value::Array(_)) => {
                problems.push(format!("{at}: {key}: takes one value, not a list"));
                continue;
            }
            (_, v) => match scalar(v) {
                Some(s) => vec![s],
                None => {
                    problems.push(format!("{at}: {key}: expected a value, found a {}", kind(v)));
                    continue;
                }
            },
        };
        for v in values {
            // Checked with the flag's own parser, so the file refuses what the flag refuses.
            // The flag's own parser, alone (its relations to other flags are checked when the
            // whole command line is parsed).
            let alone = clap::Arg::new(arg.get_id().clone())
                .action(ArgAction::Set)
                .allow_hyphen_values(true)
                .value_parser(arg.get_value_parser().clone());
            let probe = Command::new("warren-edge").no_binary_name(true).arg(alone);
            if let Err(e) = probe.try_get_matches_from([v.as_str()]) {
                let why = e.to_string();
                let why = why.lines().next().unwrap_or_default().trim_start_matches("error: ");
                let why = why.replace(&format!(" for '[{id}]'"), "");
                problems.push(format!("{at}: {key}: {why}"));
                continue;
            }
            from_file.push(flag.clone().into());
            from_file.push(v.into());
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    // The edge takes no positional arguments, and no key the command line set is here, so
    // the file's flags can simply follow (no need to find where `edge` was typed, which a
    // global flag's value could also spell).
    let mut out = argv.to_vec();
    out.extend(from_file);
    Ok(out)
}

/// A YAML scalar as the text a flag takes.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}
