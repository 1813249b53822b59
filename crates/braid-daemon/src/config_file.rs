//! Reading and checking the daemon's TOML configuration, with errors that
//! name the file, the line, the key and what is allowed.

use std::path::{Path, PathBuf};

use braid_policy::config::{PathMode, PmKind};
use braid_policy::conns::rules::AppRule;
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
    /// What was read but cannot apply, for the log and `braid status`
    /// (rules of `braid enable --mode` while pm is not "userspace").
    pub notes: Vec<String>,
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
    let mut settings = match std::fs::read_to_string(path) {
        Ok(text) => {
            parse_settings(&text).map_err(|e| format!("configuration {}: {e}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Settings::default(),
        Err(e) => {
            return Err(format!(
                "cannot read the configuration {}: {e}",
                path.display()
            ))
        }
    };
    let dir = apps_dir(path);
    let rules = load_app_files(&dir)?;
    if rules.is_empty() {
        return Ok(settings);
    }
    if settings.config.pm != PmKind::Userspace {
        settings.notes.push(format!(
            "{} rule(s) in {} (braid enable --mode) are not applied: they need pm = \"userspace\" in {}",
            rules.len(),
            dir.display(),
            path.display()
        ));
        return Ok(settings);
    }
    // Rules for one unit (`braid enable --mode`) come before the
    // configuration's: they are the most specific.
    settings.config.apps.splice(0..0, rules);
    Ok(settings)
}

/// The directory of the per-unit rule files `braid enable --mode` writes:
/// `apps.d` next to the configuration file.
pub fn apps_dir(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new("/")).join("apps.d")
}

/// The rule file of `unit` in `apps_dir`.
pub fn app_file(apps_dir: &Path, unit: &str) -> PathBuf {
    apps_dir.join(format!("{unit}.toml"))
}

/// The rule file `braid enable --mode MODE UNIT` writes. The unit is a
/// TOML literal string: systemd's escapes (`\x2d`) stay as they are
/// (`braid_apps::systemd::unit_name` refuses quotes and control
/// characters).
pub fn app_file_text(unit: &str, mode: PathMode) -> String {
    format!(
        "# Written by 'braid enable --mode {m} {unit}'; removed by 'braid disable {unit}'.\n\
         # braidd (pm = \"userspace\") gives the unit's connections this mode,\n\
         # before the rules of its configuration.\n\
         [[app]]\nunit = '{unit}'\nmode = \"{m}\"\n",
        m = mode.name()
    )
}

/// Only `[[app]]` tables in a rule file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    #[serde(default)]
    app: Vec<AppRule>,
}

/// Every `*.toml` of `dir` in name order (none if it does not exist),
/// each checked, errors naming the file.
fn load_app_files(dir: &Path) -> Result<Vec<AppRule>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "cannot read the rule directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut rules = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| format!("cannot read the rule file {}: {e}", f.display()))?;
        let file: AppFile = toml::from_str(&text).map_err(|e| {
            format!(
                "rule file {}: {} (it may hold only [[app]] tables)",
                f.display(),
                toml_error(e)
            )
        })?;
        for (i, r) in file.app.iter().enumerate() {
            r.validate()
                .map_err(|e| format!("rule file {}, app[{i}]: {e}", f.display()))?;
        }
        rules.extend(file.app);
    }
    Ok(rules)
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
        notes: Vec::new(),
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
    fn rule_files_of_braid_enable_come_first_and_need_userspace() {
        let dir = std::env::temp_dir().join(format!("braid-apps-{}", std::process::id()));
        let apps = dir.join("apps.d");
        std::fs::create_dir_all(&apps).unwrap();
        let config = dir.join("braid.toml");
        std::fs::write(
            &config,
            "pm = \"userspace\"\n[[app]]\ndport = 22\nmode = \"handover\"\n",
        )
        .unwrap();
        std::fs::write(
            app_file(&apps, "ssh.service"),
            app_file_text("ssh.service", PathMode::Interactive),
        )
        .unwrap();
        std::fs::write(apps.join("notes.txt"), "not a rule file").unwrap();
        let s = load_settings(&config, true).unwrap();
        assert_eq!(s.config.apps.len(), 2);
        assert_eq!(s.config.apps[0].unit.as_deref(), Some("ssh.service"));
        assert_eq!(s.config.apps[0].mode, PathMode::Interactive);
        assert!(s.notes.is_empty());
        // With the in-kernel path manager they are read, not applied, and said so.
        std::fs::write(&config, "").unwrap();
        let s = load_settings(&config, true).unwrap();
        assert!(s.config.apps.is_empty());
        assert!(
            s.notes[0].contains("need pm = \"userspace\""),
            "{:?}",
            s.notes
        );
        // A bad file is an error that names it.
        std::fs::write(apps.join("bad.toml"), "[policy]\nmode = \"handover\"\n").unwrap();
        let e = load_settings(&config, true).unwrap_err();
        assert!(e.contains("bad.toml") && e.contains("only [[app]]"), "{e}");
        std::fs::write(
            apps.join("bad.toml"),
            "[[app]]\nunit = \"/x/y\"\nmode = \"handover\"\n",
        )
        .unwrap();
        let e = load_settings(&config, true).unwrap_err();
        assert!(
            e.contains("bad.toml, app[0]") && e.contains("unit name"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
