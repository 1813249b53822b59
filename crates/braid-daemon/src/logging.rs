//! Logging to stderr (journald captures it under systemd), with the level
//! from BRAID_LOG.

use tracing::level_filters::LevelFilter;

pub fn init() {
    let level = match std::env::var("BRAID_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    // journald adds its own timestamps.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    if under_journal {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
