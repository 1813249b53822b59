//! Reading and checking the daemon's TOML configuration, with errors that
//! name the file, the line, the key and what is allowed.

use std::path::Path;

use braid_policy::Config;
use serde::Deserialize;

use crate::metrics::MetricsConfig;

pub const DEFAULT_PATH: &str = "/etc/braid/braid.toml";

/// Everything the daemon reads from its file: the policy's configuration
/// and the shell's own sections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub config: Config,
    pub metrics: MetricsConfig,
}

/// The sections the shell reads itself (the policy's are checked by
/// `Config`, which accepts these as opaque).
#[derive(Deserialize)]
struct ShellSections {
    #[serde(default)]
    metrics: MetricsConfig,
}

/// Load `path`. A missing file at the default path means the defaults; a
/// missing file named explicitly is an error.
pub fn load(path: &Path, explicit: bool) -> Result<Config, String> {
    load_settings(path, explicit).map(|s| s.config)
}

/// [`load`], with the shell's sections (`[metrics]`).
pub fn load_settings(path: &Path, explicit: bool) -> Result<Settings, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(Settings::default())
        }
        Err(e) => {
            return Err(format!(
                "cannot read the configuration {}: {e}",
                path.display()
            ))
        }
    };
    parse_settings(&text).map_err(|e| format!("configuration {}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Config, String> {
    parse_settings(text).map(|s| s.config)
}

fn toml_error(e: toml::de::Error) -> String {
    // toml's message already names line, column, key and the allowed values.
    e.to_string().trim_end().replace("TOML parse error at ", "")
}

fn at_line(text: &str, (key, problem): (String, String)) -> String {
    match line_of(text, &key) {
        Some(line) => format!("line {line}, key '{key}': {problem}"),
        None => format!("key '{key}': {problem}"),
    }
}

pub fn parse_settings(text: &str) -> Result<Settings, String> {
    let cfg: Config = toml::from_str(text).map_err(toml_error)?;
    cfg.validate().map_err(|e| at_line(text, e))?;
    let shell: ShellSections = toml::from_str(text).map_err(toml_error)?;
    shell.metrics.validate().map_err(|e| at_line(text, e))?;
    Ok(Settings {
        config: cfg,
        metrics: shell.metrics,
    })
}

/// Best-effort line of a dotted key such as `filter.ipv4` or `interface[1].flags`.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (table, field) = key.rsplit_once('.')?;
    let (name, index) = match table.split_once('[') {
        Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()?),
        None => (table, 0),
    };
    let mut seen = 0;
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let header = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = header == name && {
                seen += 1;
                seen - 1 == index
            };
            continue;
        }
        if in_table && t.split('=').next().map(str::trim) == Some(field) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_point_at_the_line() {
        let text = "[[interface]]\nname = \"a\"\n\n[[interface]]\nname = \"b\"\nflags = [\"signal\", \"fullmesh\"]\n";
        let e = parse(text).unwrap_err();
        assert!(e.starts_with("line 6, key 'interface[1].flags'"), "{e}");
        let e = parse("[filter]\nipv4 = false\nipv6 = false\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("filter.ipv4"), "{e}");
        let e = parse("mode = 3\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("mode"), "{e}");
        assert!(parse("").is_ok());
    }

    #[test]
    fn metrics_section_is_read_and_checked() {
        let s = parse_settings("[metrics]\nlisten = \"127.0.0.1:9853\"\n").unwrap();
        assert_eq!(s.metrics.listen.as_deref(), Some("127.0.0.1:9853"));
        assert_eq!(s.metrics.textfile_interval_s, 15);
        assert!(!parse_settings("").unwrap().metrics.enabled());
        let e = parse_settings("mode = \"client\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("line 4, key 'metrics.listen'") && e.contains("port 0"),
            "{e}"
        );
        let e = parse_settings("[metrics]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("IP address and port"),
            "{e}"
        );
        let e = parse_settings("[metrics]\nport = 9853\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("port") && e.contains("listen"),
            "{e}"
        );
        // The relay's reader ignores the section, and the example file has it.
        assert!(parse_settings(include_str!("../../../contrib/braid.toml")).is_ok());
    }
}
