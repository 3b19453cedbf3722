//! An agent config file (version 3) from arbitrary text, for the fuzz target `config` and
//! the regression test that replays its corpus. Not part of the API.

use crate::config_file::AgentFile;

/// Parsed and, when it parses, turned into endpoint configurations. Never panics.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut file = AgentFile::default();
    if file.merge("fuzz.yml", text).is_ok() {
        let _ = file.log();
        let names: Vec<String> = file.endpoint_names().into_iter().map(str::to_owned).collect();
        let _ = file.agent_config(&names);
    }
}
