//! The systemd units in contrib/: systemd itself accepts every line, and
//! the command each starts is one Braid accepts. (CI machines have no
//! systemd running, but `systemd-analyze verify` works offline.)

mod common;
use common::{unique, BRAID};

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 3] = ["braid", "braid-relay", "braid-relay-client"];

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(name)
}

/// The unit with its binaries pointed at this build.
fn unit_text(unit: &str) -> String {
    let braidd = Path::new(BRAID).with_file_name("braidd");
    std::fs::read_to_string(contrib(&format!("{unit}.service")))
        .unwrap()
        .replace("/usr/local/bin/braidd", braidd.to_str().unwrap())
        .replace("/usr/local/bin/braid ", &format!("{BRAID} "))
}

#[test]
fn systemd_accepts_every_line_of_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    let dir = std::env::temp_dir().join(unique("units"));
    std::fs::create_dir_all(&dir).unwrap();
    for unit in UNITS {
        let path = dir.join(format!("{unit}.service"));
        std::fs::write(&path, unit_text(unit)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // verify exits 0 on lines it ignores: any message is a defect.
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{unit}.service: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_relay_units_start_commands_braid_accepts() {
    let dir = std::env::temp_dir().join(unique("unitcmd"));
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let keygen = |name: &str| -> String {
        let out = Command::new(BRAID)
            .args(["relay", "keygen", "--out"])
            .arg(creds.join(name))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let relay_pub = keygen("relay.key");
    let client_pub = keygen("relay-client.key");
    let config = dir.join("braid.toml");
    std::fs::write(
        &config,
        format!(
            "[relay.server]\nkey_file = \"/nonexistent/relay.key\"\n[[relay.server.client]]\nname = \"c\"\npublic_key = \"{client_pub}\"\n\n[relay.client]\nrelay = \"192.0.2.1:7000\"\nrelay_public_key = \"{relay_pub}\"\nkey_file = \"/nonexistent/client.key\"\n"
        ),
    )
    .unwrap();
    for unit in ["braid-relay", "braid-relay-client"] {
        let text = unit_text(unit);
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        // What systemd would run: the credential directory, our config;
        // --check-config loads the key (from the credential, not from the
        // configuration's key_file) and exits.
        let exec = exec
            .replace("${CREDENTIALS_DIRECTORY}", creds.to_str().unwrap())
            .replace("/etc/braid/braid.toml", config.to_str().unwrap());
        let words: Vec<&str> = exec.split_whitespace().collect();
        let out = Command::new(words[0])
            .args(&words[1..])
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{unit}: {exec} --check-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
