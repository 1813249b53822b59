//! `braid relay ...`: keys, the relay server, the relay client and their
//! status. Parsing and printing only; the relay lives in `braid-relay`.

use std::io::Read;
use std::path::{Path, PathBuf};

use braid_kernel::Error;
use braid_relay::config::{self, ClientConfig, Listener};
use braid_relay::keys::{PrivateKey, PublicKey};
use braid_relay::stats::{ClientStatus, PathBytes, ServerStatus, Status};
use clap::{Args, Subcommand};

use crate::{print_json, Ctx};

#[derive(Subcommand)]
pub enum RelayCmd {
    /// Make a private key (printed, or written to --out with mode 0600).
    Keygen {
        /// Write the key to this new file (never overwritten) and print the public key.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public key of a private key (read from --key or standard input).
    Pubkey {
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Run the relay: [relay.server] of the configuration.
    Serve {
        #[arg(long, short = 'c', value_name = "FILE", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The relay's private key (instead of key_file; e.g. a systemd credential).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Status socket (instead of control_socket).
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
        /// Check the configuration and the key, then exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run the relay client: SOCKS5 and HTTP CONNECT listeners whose connections go through the relay.
    Connect(ConnectArgs),
    /// Remove transparent mode's nftables table if a relay client left it
    /// behind (it does so itself when it stops; this is for after a crash).
    Cleanup,
    /// What a running relay or relay client is doing.
    Status {
        /// Its status socket (default: the relay's, then the client's).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct ConnectArgs {
    /// Configuration with [relay.client] (not needed with --relay, --relay-key and --key).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The relay, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    relay: Option<String>,
    /// The relay's public key.
    #[arg(long, value_name = "KEY")]
    relay_key: Option<String>,
    /// This client's private key file (with --relay; or instead of key_file).
    #[arg(long, alias = "key-file", value_name = "FILE")]
    key: Option<PathBuf>,
    /// SOCKS5 listener (default 127.0.0.1:1080), or "off".
    #[arg(long, value_name = "ADDR")]
    socks: Option<String>,
    /// HTTP CONNECT listener (default 127.0.0.1:3128), or "off".
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Status socket.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Do not put the first message in the SYN (TCP Fast Open).
    #[arg(long)]
    no_fast_open: bool,
    /// Answer CONNECT at once and send the program's first bytes with the
    /// destination (a round trip less; failures become resets).
    #[arg(long)]
    early_reply: bool,
    /// Check the configuration and the key, then exit.
    #[arg(long)]
    check_config: bool,
    /// Transparent mode: redirect outgoing TCP (of --scope) through the relay,
    /// no proxy setting needed (CAP_NET_ADMIN; nftables rules of its own).
    #[arg(long)]
    transparent: bool,
    /// Whose connections: host, uid:N, cgroup:/PATH, lan:IF[,IF].
    #[arg(long, value_name = "SCOPE")]
    scope: Option<String>,
    /// When the relay is unreachable: direct or block.
    #[arg(long, value_parser = ["direct", "block"])]
    fallback: Option<String>,
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(e.to_string())
}

pub fn run(ctx: &Ctx, cmd: RelayCmd) -> Result<(), Error> {
    match cmd {
        RelayCmd::Keygen { out } => keygen(ctx, out.as_deref()),
        RelayCmd::Pubkey { key } => pubkey(ctx, key.as_deref()),
        RelayCmd::Serve {
            config,
            key_file,
            control_socket,
            check_config,
        } => serve(ctx, &config, key_file, control_socket, check_config),
        RelayCmd::Connect(a) => connect(ctx, a),
        RelayCmd::Status { socket } => status(ctx, socket),
        RelayCmd::Cleanup => {
            let removed =
                braid_relay::interceptor::Interceptor::clean_leftovers().map_err(invalid)?;
            if ctx.json {
                print_json(&serde_json::json!({"removed": removed}));
            } else if removed {
                println!(
                    "removed the nftables table inet {} a relay client had left",
                    braid_relay::transparent::TABLE
                );
            } else {
                println!(
                    "nothing to clean: no table inet {}",
                    braid_relay::transparent::TABLE
                );
            }
            Ok(())
        }
    }
}

fn keygen(ctx: &Ctx, out: Option<&Path>) -> Result<(), Error> {
    let key = PrivateKey::generate().map_err(invalid)?;
    match out {
        Some(path) => {
            key.save_new(path).map_err(invalid)?;
            if ctx.json {
                print_json(
                    &serde_json::json!({"private_key_file": path, "public_key": key.public().to_text()}),
                );
            } else {
                eprintln!(
                    "private key written to {} (mode 0600); its public key:",
                    path.display()
                );
                println!("{}", key.public());
            }
        }
        None => {
            if ctx.json {
                print_json(
                    &serde_json::json!({"private_key": key.to_text(), "public_key": key.public().to_text()}),
                );
            } else {
                println!("{}", key.to_text());
            }
        }
    }
    Ok(())
}

fn pubkey(ctx: &Ctx, path: Option<&Path>) -> Result<(), Error> {
    let key = match path {
        Some(p) => PrivateKey::load(p).map_err(invalid)?,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .take(1024)
                .read_to_string(&mut text)
                .map_err(|e| {
                    invalid(format!("reading the private key from standard input: {e}"))
                })?;
            PrivateKey::from_text(&text).map_err(invalid)?
        }
    };
    if ctx.json {
        print_json(&serde_json::json!({"public_key": key.public().to_text()}));
    } else {
        println!("{}", key.public());
    }
    Ok(())
}

fn serve(
    ctx: &Ctx,
    path: &Path,
    key_file: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    check: bool,
) -> Result<(), Error> {
    let section = config::load(path).map_err(invalid)?;
    let mut cfg = section.server.ok_or_else(|| {
        invalid(format!(
            "{} has no [relay.server] section: see contrib/braid.toml for an example",
            path.display()
        ))
    })?;
    if let Some(k) = key_file {
        cfg.key_file = k;
    }
    if let Some(c) = control_socket {
        cfg.control_socket = c;
    }
    if check {
        let key = PrivateKey::load(&cfg.key_file).map_err(invalid)?;
        if ctx.json {
            print_json(
                &serde_json::json!({"valid": true, "public_key": key.public().to_text(), "clients": cfg.clients.len()}),
            );
        } else {
            println!(
                "{}: [relay.server] is valid; relay public key {}, {} client(s) allowed",
                path.display(),
                key.public(),
                cfg.clients.len()
            );
        }
        return Ok(());
    }
    braid_daemon::logging::init();
    braid_relay::service::serve(cfg).map_err(invalid)
}

fn client_config(a: &ConnectArgs) -> Result<ClientConfig, Error> {
    let mut cfg = match (&a.config, &a.relay) {
        (Some(path), _) => config::load(path)
            .map_err(invalid)?
            .client
            .ok_or_else(|| invalid(format!("{} has no [relay.client] section", path.display())))?,
        (None, Some(relay)) => {
            let (Some(key), Some(relay_key)) = (&a.key, &a.relay_key) else {
                return Err(invalid(
                    "--relay needs --relay-key (the relay's public key) and --key (this client's private key file)",
                ));
            };
            let relay_key = PublicKey::from_text(relay_key).map_err(invalid)?;
            ClientConfig::new(relay, relay_key, key.clone()).map_err(invalid)?
        }
        (None, None) => {
            let path = Path::new(config::DEFAULT_PATH);
            config::load(path)
                .map_err(|e| invalid(format!("{e} (or give --relay, --relay-key and --key)")))?
                .client
                .ok_or_else(|| {
                    invalid(format!(
                        "{} has no [relay.client] section (or give --relay, --relay-key and --key)",
                        path.display()
                    ))
                })?
        }
    };
    if let (Some(k), None) = (&a.key, &a.relay) {
        cfg.key_file = k.clone();
    }
    if let Some(s) = &a.socks {
        cfg.socks = Listener::parse(s).map_err(|e| invalid(format!("--socks: {e}")))?;
    }
    if let Some(s) = &a.http {
        cfg.http = Listener::parse(s).map_err(|e| invalid(format!("--http: {e}")))?;
    }
    if cfg.socks.0.is_none() && cfg.http.0.is_none() && !cfg.transparent && !a.transparent {
        return Err(invalid(
            "both the SOCKS5 and the HTTP listener are off and transparent mode is not on: no program could use the relay",
        ));
    }
    if let Some(p) = &a.control_socket {
        cfg.control_socket = p.clone();
    }
    if a.no_fast_open {
        cfg.fast_open = false;
    }
    if a.early_reply {
        cfg.early_reply = true;
    }
    if a.transparent {
        cfg.transparent = true;
    }
    if let Some(scope) = &a.scope {
        cfg.scope = config::Scope::parse(scope).map_err(|e| invalid(format!("--scope: {e}")))?;
    }
    if let Some(f) = &a.fallback {
        cfg.fallback = if f == "block" {
            config::Fallback::Block
        } else {
            config::Fallback::Direct
        };
    }
    if (a.scope.is_some() || a.fallback.is_some()) && !cfg.transparent {
        return Err(invalid(
            "--scope and --fallback are for transparent mode: add --transparent",
        ));
    }
    Ok(cfg)
}

fn connect(ctx: &Ctx, a: ConnectArgs) -> Result<(), Error> {
    let cfg = client_config(&a)?;
    if a.check_config {
        let key = PrivateKey::load(&cfg.key_file).map_err(invalid)?;
        if ctx.json {
            print_json(&serde_json::json!({"valid": true, "public_key": key.public().to_text()}));
        } else {
            println!(
                "[relay.client] is valid; this client's public key (list it on the relay): {}",
                key.public()
            );
        }
        return Ok(());
    }
    braid_daemon::logging::init();
    braid_relay::service::connect(cfg).map_err(invalid)
}

const SERVER_SOCKET: &str = config::DEFAULT_SERVER_SOCKET;
const CLIENT_SOCKET: &str = config::DEFAULT_CLIENT_SOCKET;

fn status(ctx: &Ctx, socket: Option<PathBuf>) -> Result<(), Error> {
    let status = match socket {
        Some(s) => braid_relay::control::request_status(&s).map_err(invalid)?,
        None => braid_relay::control::request_status(Path::new(SERVER_SOCKET))
            .or_else(|_| braid_relay::control::request_status(Path::new(CLIENT_SOCKET)))
            .map_err(|_| {
                invalid(format!(
                    "neither a relay ({SERVER_SOCKET}) nor a relay client ({CLIENT_SOCKET}) answers: start one with 'braid relay serve' or 'braid relay connect', or give --socket"
                ))
            })?,
    };
    if ctx.json {
        print_json(&status);
        return Ok(());
    }
    match status {
        Status::Server(s) => print_server(&s),
        Status::Client(c) => print_client(&c),
    }
    Ok(())
}

/// The relay and relay client answering on their default sockets.
pub fn running() -> Vec<Status> {
    [SERVER_SOCKET, CLIENT_SOCKET]
        .iter()
        .filter(|p| Path::new(p).exists())
        .filter_map(|p| braid_relay::control::request_status(Path::new(p)).ok())
        .collect()
}

/// One line for `braid status`.
pub fn one_line(s: &Status) -> String {
    match s {
        Status::Server(s) => format!(
            "relay           serving on {} ({} clients allowed): {} connections open, {} in all, {} refused (braid relay status)",
            s.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
            s.clients.len(),
            s.streams.active,
            s.streams.total,
            s.refused.values().sum::<u64>()
        ),
        Status::Client(c) => format!(
            "relay client    to {}: {} connections open, {} in all ({} over MPTCP, {} over TCP), {} failed (braid relay status)",
            c.relay,
            c.streams.active,
            c.streams.total,
            c.over_mptcp,
            c.over_tcp,
            c.failures.values().sum::<u64>()
        ),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn print_paths(paths: &[PathBytes]) {
    if paths.is_empty() {
        println!("paths           none used yet");
        return;
    }
    println!("paths           (subflows by local -> remote address; bytes sent / received)");
    for p in paths {
        let show =
            |a: Option<std::net::IpAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
        println!(
            "  {:>15} -> {:<15}  {:>2} open  {:>11} / {:>11}",
            show(p.local),
            show(p.remote),
            p.subflows,
            bytes(p.bytes_sent),
            bytes(p.bytes_received)
        );
    }
}

fn print_refusals(title: &str, m: &std::collections::BTreeMap<String, u64>) {
    if m.is_empty() {
        println!("{title:<15} none");
    } else {
        let list: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{title:<15} {}", list.join(", "));
    }
}

fn print_server(s: &ServerStatus) {
    let listen: Vec<String> = s
        .listen
        .iter()
        .zip(&s.transports)
        .map(|(a, t)| format!("{a} ({t})"))
        .collect();
    println!(
        "relay           running (pid {}, up {} s)",
        s.pid, s.uptime_s
    );
    println!("listen          {}", listen.join(", "));
    println!("public key      {}", s.public_key);
    println!("fast open       {}", s.fast_open);
    println!(
        "connections     {} open, {} in all ({} over MPTCP, {} over TCP); {} in handshake",
        s.streams.active, s.streams.total, s.over_mptcp, s.over_tcp, s.handshakes_in_progress
    );
    println!(
        "bytes           {} to destinations, {} from them",
        bytes(s.streams.bytes_up),
        bytes(s.streams.bytes_down)
    );
    println!("clients");
    for c in &s.clients {
        let limit = c
            .max_connections
            .map(|m| format!(" (limit {m})"))
            .unwrap_or_default();
        println!(
            "  {:<16} {} open{limit}, {} in all, {} up, {} down  key {}",
            c.name,
            c.streams.active,
            c.streams.total,
            bytes(c.streams.bytes_up),
            bytes(c.streams.bytes_down),
            &c.public_key[..8]
        );
    }
    print_refusals("refused", &s.refused);
    print_paths(&s.paths);
}

fn print_client(c: &ClientStatus) {
    let show =
        |l: Option<std::net::SocketAddr>| l.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    println!(
        "relay client    running (pid {}, up {} s)",
        c.pid, c.uptime_s
    );
    println!(
        "relay           {} (key {})",
        c.relay,
        &c.relay_public_key[..8]
    );
    println!("public key      {}", c.public_key);
    println!(
        "listeners       SOCKS5 {}, HTTP CONNECT {}",
        show(c.socks),
        show(c.http)
    );
    println!("fast open       {}", c.fast_open);
    println!(
        "connections     {} open, {} in all ({} over MPTCP, {} over TCP)",
        c.streams.active, c.streams.total, c.over_mptcp, c.over_tcp
    );
    println!(
        "bytes           {} up, {} down",
        bytes(c.streams.bytes_up),
        bytes(c.streams.bytes_down)
    );
    print_refusals("failures", &c.failures);
    if let Some(f) = &c.last_failure {
        println!("last failure    {f}");
    }
    if !c.relay_reachable {
        println!("relay           NOT REACHABLE at the last attempt");
    }
    if let Some(t) = &c.transparent {
        println!(
            "transparent     {} -> port {}; fallback {}, QUIC {}, DNS {}",
            t.scope, t.port, t.fallback, t.quic, t.dns
        );
        let kernel = match t.rules_in_kernel {
            Some(n) if n == t.rules_installed => format!("{n} rules in table inet braid"),
            Some(n) => format!(
                "{n} rules in table inet braid, {} installed: someone changed the table",
                t.rules_installed
            ),
            None => "table inet braid MISSING: nothing is redirected (restart the client)".into(),
        };
        println!("  rules         {kernel}");
        println!(
            "  connections   {} through the relay, {} direct (relay down), {} refused; DNS {} answered, {} failed",
            t.relayed, t.direct, t.blocked, t.dns_answered, t.dns_failed
        );
    }
    if c.over_tcp > 0 && c.over_mptcp == 0 {
        println!("hint            no connection reached the relay over MPTCP: check 'braid status' (MPTCP enabled? the relay's listener MPTCP?)");
    }
    print_paths(&c.paths);
}
