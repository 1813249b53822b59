//! Reading and checking the daemon's TOML configuration, with errors that
//! name the file, the line, the key and what is allowed.

use std::path::Path;

use braid_policy::Config;

pub const DEFAULT_PATH: &str = "/etc/braid/braid.toml";

/// Load `path`. A missing file at the default path means the defaults; a
/// missing file named explicitly is an error.
pub fn load(path: &Path, explicit: bool) -> Result<Config, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(Config::default())
        }
        Err(e) => {
            return Err(format!(
                "cannot read the configuration {}: {e}",
                path.display()
            ))
        }
    };
    parse(&text).map_err(|e| format!("configuration {}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Config, String> {
    let cfg: Config = toml::from_str(text).map_err(|e| {
        // toml's message already names line, column, key and the allowed values.
        e.to_string().trim_end().replace("TOML parse error at ", "")
    })?;
    cfg.validate()
        .map_err(|(key, problem)| match line_of(text, &key) {
            Some(line) => format!("line {line}, key '{key}': {problem}"),
            None => format!("key '{key}': {problem}"),
        })?;
    Ok(cfg)
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
}
