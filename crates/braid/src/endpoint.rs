//! `braid endpoint ...` and `braid limits ...`: the in-kernel path manager's
//! table, with `ip mptcp`'s words and semantics.

use std::net::IpAddr;

use braid_kernel::pm::{
    Endpoint, EndpointFlags, EndpointSelector, Limits, NewEndpoint, PathManager,
};
use braid_kernel::{Error, Result};
use clap::Subcommand;
use serde::Serialize;

use crate::{print_json, Ctx};
use braid_kernel::interfaces::Interfaces;

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Add an endpoint: ADDR [id ID] [dev IFNAME] [port PORT] [signal] [subflow] [backup] [fullmesh] [laminar]
    Add {
        /// Local IPv4 or IPv6 address.
        addr: String,
        /// Keywords as in `ip mptcp endpoint add`.
        #[arg(trailing_var_arg = true, value_name = "WORDS")]
        words: Vec<String>,
    },
    /// Delete an endpoint: ID | id ID | ADDR
    #[command(alias = "delete", alias = "rm")]
    Del {
        #[arg(num_args = 1..=3, value_name = "ID|ADDR", required = true)]
        words: Vec<String>,
    },
    /// List endpoints, or show one: [id ID]
    #[command(alias = "show", alias = "ls")]
    List {
        #[arg(num_args = 0..=2, value_name = "id ID")]
        words: Vec<String>,
    },
    /// Delete every endpoint.
    Flush,
    /// Change the flags of an endpoint: ID|ADDR [backup|nobackup] [fullmesh|nofullmesh] [laminar|nolaminar]
    #[command(alias = "change")]
    Set {
        #[arg(num_args = 2.., value_name = "WORDS", required = true)]
        words: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum LimitsCmd {
    /// Show the limits.
    #[command(alias = "show")]
    Get,
    /// Set limits: [subflows N] [add_addr_accepted N]  (0 to 8)
    Set {
        #[arg(num_args = 2..=4, value_name = "WORDS", required = true)]
        words: Vec<String>,
    },
}

/// An endpoint as printed: the kernel's view plus the interface name.
#[derive(Serialize)]
pub struct EndpointView {
    #[serde(flatten)]
    pub ep: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

impl EndpointView {
    pub fn new(ep: Endpoint, ifs: Option<&Interfaces>) -> Self {
        let dev = ep.ifindex.map(|i| {
            ifs.and_then(|ifs| ifs.name(i).map(str::to_string))
                .unwrap_or_else(|| format!("if{i}"))
        });
        EndpointView { ep, dev }
    }

    /// One line in `ip mptcp endpoint show` order.
    pub fn line(&self) -> String {
        let mut s = self.ep.addr.to_string();
        if let Some(p) = self.ep.port {
            s.push_str(&format!(" port {p}"));
        }
        s.push_str(&format!(" id {}", self.ep.id));
        for f in self.ep.flags.names() {
            s.push(' ');
            s.push_str(&f);
        }
        if let Some(d) = &self.dev {
            s.push_str(&format!(" dev {d}"));
        }
        s
    }
}

fn parse_addr(s: &str) -> Result<IpAddr> {
    s.parse().map_err(|_| {
        Error::Invalid(format!("invalid address '{s}': expected an IPv4 or IPv6 address such as 192.0.2.1 or 2001:db8::1"))
    })
}

fn parse_id(s: &str) -> Result<u8> {
    match s.parse::<u32>() {
        Ok(n) if (1..=255).contains(&n) => Ok(n as u8),
        Ok(n) => Err(Error::Invalid(format!(
            "endpoint id {n} is out of range: ids run from 1 to 255 (0 is the initial subflow's address)"
        ))),
        Err(_) => Err(Error::Invalid(format!("invalid endpoint id '{s}': expected a number from 1 to 255"))),
    }
}

fn parse_port(s: &str) -> Result<u16> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Error::Invalid(format!(
            "invalid port '{s}': expected 1 to 65535"
        ))),
    }
}

fn parse_limit(s: &str) -> Result<u32> {
    match s.parse::<u32>() {
        Ok(n) if n <= braid_kernel::pm::KERNEL_MAX_LIMIT => Ok(n),
        _ => Err(Error::Invalid(format!(
            "invalid limit '{s}': expected a number from 0 to {}",
            braid_kernel::pm::KERNEL_MAX_LIMIT
        ))),
    }
}

fn ifindex_of(name: &str) -> Result<u32> {
    braid_kernel::rtnl::link_index(name)?.ok_or_else(|| {
        Error::Invalid(format!(
            "no interface named '{name}' in this network namespace (see 'ip link')"
        ))
    })
}

/// Take the value after a keyword, or explain that it is missing.
fn value_after<'a>(it: &mut impl Iterator<Item = &'a String>, key: &str) -> Result<&'a str> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| Error::Invalid(format!("'{key}' needs a value")))
}

pub fn parse_new_endpoint(addr: &str, words: &[String]) -> Result<NewEndpoint> {
    let mut ep = NewEndpoint {
        addr: parse_addr(addr)?,
        id: None,
        port: None,
        flags: EndpointFlags::default(),
        ifindex: None,
    };
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "id" => ep.id = Some(parse_id(value_after(&mut it, "id")?)?),
            "dev" => ep.ifindex = Some(ifindex_of(value_after(&mut it, "dev")?)?),
            "port" => ep.port = Some(parse_port(value_after(&mut it, "port")?)?),
            flag => ep.flags.0 |= EndpointFlags::parse_name(flag).map_err(Error::Invalid)?,
        }
    }
    Ok(ep)
}

fn parse_selector(words: &[String]) -> Result<EndpointSelector> {
    match words {
        [id_kw, id] if id_kw == "id" => Ok(EndpointSelector::Id(parse_id(id)?)),
        // `ip mptcp endpoint delete id 0 ADDR`: the address names id 0.
        [id_kw, _, addr] if id_kw == "id" => Ok(EndpointSelector::Addr(parse_addr(addr)?)),
        [one] => match one.parse::<u32>() {
            Ok(_) => Ok(EndpointSelector::Id(parse_id(one)?)),
            Err(_) => Ok(EndpointSelector::Addr(parse_addr(one)?)),
        },
        _ => Err(Error::Invalid(
            "name the endpoint by id ('id 3' or '3') or by address".into(),
        )),
    }
}

pub fn run_endpoint(ctx: &Ctx, cmd: EndpointCmd) -> Result<()> {
    match cmd {
        EndpointCmd::Add { addr, words } => {
            // Validate everything before touching the kernel.
            let ep = parse_new_endpoint(&addr, &words)?;
            PathManager::open()?.add_endpoint(&ep)?;
            if ctx.json {
                print_json(&serde_json::json!({"added": ep.addr, "id": ep.id}));
            }
            Ok(())
        }
        EndpointCmd::Del { words } => {
            let sel = parse_selector(&words)?;
            let mut pm = PathManager::open()?;
            match &sel {
                EndpointSelector::Addr(a) => {
                    // The kernel deletes by id; find the id for this address.
                    let ep = pm
                        .endpoints()?
                        .into_iter()
                        .find(|e| e.addr == *a)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "no endpoint has address {a}; list them with 'braid endpoint list'"
                            ))
                        })?;
                    pm.del_endpoint(&EndpointSelector::Id(ep.id))?;
                }
                EndpointSelector::Id(_) => pm.del_endpoint(&sel)?,
            }
            Ok(())
        }
        EndpointCmd::List { words } => {
            let mut pm = PathManager::open()?;
            let eps = match words.as_slice() {
                [] => pm.endpoints()?,
                [kw, id] if kw == "id" => vec![pm.get_endpoint(parse_id(id)?)?],
                [id] => vec![pm.get_endpoint(parse_id(id)?)?],
                _ => return Err(Error::Invalid("usage: braid endpoint list [id ID]".into())),
            };
            let ifs = Interfaces::load().ok();
            let views: Vec<EndpointView> = eps
                .into_iter()
                .map(|e| EndpointView::new(e, ifs.as_ref()))
                .collect();
            if ctx.json {
                print_json(&views);
            } else {
                for v in &views {
                    println!("{}", v.line());
                }
            }
            Ok(())
        }
        EndpointCmd::Flush => PathManager::open()?.flush_endpoints(),
        EndpointCmd::Set { words } => {
            let mut pm = PathManager::open()?;
            let (sel_words, flag_words) = if words[0] == "id" {
                words.split_at(2.min(words.len()))
            } else {
                words.split_at(1)
            };
            let sel = parse_selector(sel_words)?;
            let current = match &sel {
                EndpointSelector::Id(id) => pm.get_endpoint(*id)?,
                EndpointSelector::Addr(a) => pm
                    .endpoints()?
                    .into_iter()
                    .find(|e| e.addr == *a)
                    .ok_or_else(|| Error::Invalid(format!("no endpoint has address {a}")))?,
            };
            let mut flags = current.flags.0 & !EndpointFlags::IMPLICIT;
            if flag_words.is_empty() {
                return Err(Error::Invalid(
                    "say what to change: backup, nobackup, fullmesh, nofullmesh, laminar or nolaminar".into(),
                ));
            }
            for w in flag_words {
                match w.strip_prefix("no") {
                    Some(name @ ("backup" | "fullmesh" | "laminar")) => {
                        flags &= !EndpointFlags::parse_name(name).map_err(Error::Invalid)?
                    }
                    _ => match w.as_str() {
                        "backup" | "fullmesh" | "laminar" => flags |= EndpointFlags::parse_name(w).map_err(Error::Invalid)?,
                        other => {
                            return Err(Error::Invalid(format!(
                                "'{other}' cannot be changed on an existing endpoint: only backup, fullmesh and laminar (or nobackup, nofullmesh, nolaminar) can; delete and re-add it to change the rest"
                            )))
                        }
                    },
                }
            }
            pm.set_endpoint_flags(&EndpointSelector::Id(current.id), EndpointFlags(flags))
        }
    }
}

pub fn limits_line(l: &Limits) -> String {
    format!(
        "add_addr_accepted {} subflows {}",
        l.add_addr_accepted, l.subflows
    )
}

pub fn run_limits(ctx: &Ctx, cmd: LimitsCmd) -> Result<()> {
    let mut pm = PathManager::open()?;
    match cmd {
        LimitsCmd::Get => {
            let l = pm.limits()?;
            if ctx.json {
                print_json(&l);
            } else {
                println!("{}", limits_line(&l));
            }
            Ok(())
        }
        LimitsCmd::Set { words } => {
            let mut subflows = None;
            let mut accepted = None;
            let mut it = words.iter();
            while let Some(w) = it.next() {
                match w.as_str() {
                    "subflows" | "subflow" => subflows = Some(parse_limit(value_after(&mut it, w)?)?),
                    "add_addr_accepted" => accepted = Some(parse_limit(value_after(&mut it, w)?)?),
                    other => {
                        return Err(Error::Invalid(format!(
                            "unknown limit '{other}': the limits are 'subflows' and 'add_addr_accepted'"
                        )))
                    }
                }
            }
            pm.set_limits(subflows, accepted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ip_style_words_parse() {
        let ep = parse_new_endpoint("10.0.0.1", &w("id 5 port 443 signal backup")).unwrap();
        assert_eq!(ep.id, Some(5));
        assert_eq!(ep.port, Some(443));
        assert_eq!(ep.flags.0, EndpointFlags::SIGNAL | EndpointFlags::BACKUP);
    }

    #[test]
    fn bad_words_are_clear_errors() {
        let msg = |r: Result<NewEndpoint>| r.unwrap_err().to_string();
        assert!(msg(parse_new_endpoint("10.0.0.300", &[])).contains("invalid address"));
        assert!(msg(parse_new_endpoint("10.0.0.1", &w("id 0"))).contains("out of range"));
        assert!(msg(parse_new_endpoint("10.0.0.1", &w("id 300"))).contains("out of range"));
        assert!(msg(parse_new_endpoint("10.0.0.1", &w("turbo"))).contains("unknown endpoint flag"));
        assert!(msg(parse_new_endpoint("10.0.0.1", &w("id"))).contains("needs a value"));
        assert!(msg(parse_new_endpoint("10.0.0.1", &w("port 0"))).contains("invalid port"));
    }

    #[test]
    fn selectors() {
        assert_eq!(parse_selector(&w("id 3")).unwrap(), EndpointSelector::Id(3));
        assert_eq!(parse_selector(&w("3")).unwrap(), EndpointSelector::Id(3));
        assert!(matches!(
            parse_selector(&w("10.0.0.1")).unwrap(),
            EndpointSelector::Addr(_)
        ));
        assert!(parse_selector(&w("999")).is_err());
    }
}
