//! Seeds for the fuzz targets: valid inputs, each written where its target's
//! corpus is (`<out>/<target>/seed-<name>`), in the input layout the target
//! reads (selector bytes, sequence numbers, then the bytes under test).
//!
//! Kernel seeds are real answers of the running kernel: the program moves
//! into a new network namespace (root only), sets up links (veth pairs: the
//! dummy driver may be missing), addresses, routes, MPTCP endpoints, an
//! MPTCP connection, Braid's nf_tables table and a redirected UDP flow, and
//! records every netlink datagram the kernel sends back.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use braid_kernel::nft::{self, Chain, ChainKind, Hook, Match, Rule, Table, Verdict};
use braid_relay::keys::PrivateKey;
use braid_relay::noise::Initiator;
use braid_relay::wire::{Destination, Kind, Reply, Request, Status};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_netfilter::conntrack::ConntrackMessage;
use netlink_packet_netfilter::nftables::{
    NfTablesMessage, RuleAttribute, RuleMessage, TableMessage,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols, Socket};

struct Out {
    dir: PathBuf,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let d = self.dir.join(target);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
        self.count += 1;
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------
// Relay, daemon and synthetic kernel seeds.

fn relay(out: &mut Out) {
    let dests = [
        Destination::parse("example.com:443").unwrap(),
        Destination::parse("10.1.2.3:80").unwrap(),
        Destination::parse("[2001:db8::1]:8443").unwrap(),
        Destination::parse("a-b_c.example.:53").unwrap(),
    ];
    let kinds = [Kind::Tcp, Kind::Dns, Kind::Ping, Kind::Udp];
    let relay_key = PrivateKey::from_bytes([7; 32]);
    let client_key = PrivateKey::from_bytes([9; 32]);
    for (i, d) in dests.iter().enumerate() {
        let r = Request {
            kind: kinds[i],
            timestamp_ms: 1_800_000_000_000 + i as u64,
            destination: d.clone(),
            early_data: if i == 0 {
                b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec()
            } else {
                vec![]
            },
        };
        let enc = r.encode();
        out.put("relay_request", &format!("{i}"), &enc);
        let mut denc = Vec::new();
        d.encode(&mut denc);
        out.put("relay_destination", &format!("bin{i}"), &denc);
        out.put(
            "relay_destination",
            &format!("text{i}"),
            d.to_string().as_bytes(),
        );
        let mut i1 = Initiator::new(&client_key, &relay_key.public()).unwrap();
        out.put(
            "relay_noise_first",
            &format!("{i}"),
            &i1.first_message(&enc).unwrap(),
        );
        out.put("relay_wire_roundtrip", &format!("{i}"), &enc);
        out.put("relay_handshake_roundtrip", &format!("{i}"), &enc);
        // A SOCKS request and datagram for the same destination.
        let mut socks = vec![5, 1, 0];
        d.encode(&mut socks);
        out.put("relay_socks", &format!("request{i}"), &cat(&[&[1], &socks]));
        let mut udp = vec![0, 0, 0];
        d.encode(&mut udp);
        udp.extend_from_slice(b"datagram");
        out.put("relay_socks", &format!("udp{i}"), &cat(&[&[2], &udp]));
        out.put(
            "relay_http_connect",
            &format!("{i}"),
            format!("CONNECT {d} HTTP/1.1\r\nHost: {d}\r\nUser-Agent: curl/8\r\n\r\nhello")
                .as_bytes(),
        );
    }
    out.put("relay_noise_first", "garbage", &[0x42; 120]);
    for (i, (s, why)) in [
        (Status::Connected, ""),
        (Status::NotAllowed, "destination refused"),
        (Status::TimedOut, "é"),
    ]
    .iter()
    .enumerate()
    {
        let r = Reply {
            status: *s,
            reason: why.to_string(),
        };
        out.put("relay_reply", &format!("{i}"), &r.encode());
    }
    for (i, f) in [&[0u8, 1, 2, 3][..], &[1], &[2], &[0]].iter().enumerate() {
        out.put("relay_frame", &format!("{i}"), f);
    }
    // Streams of length-prefixed messages.
    let mut stream = Vec::new();
    for m in [&b"first"[..], b"", &[7u8; 300]] {
        stream.extend_from_slice(&(m.len() as u16).to_be_bytes());
        stream.extend_from_slice(m);
    }
    out.put(
        "relay_message_reader",
        "raw",
        &cat(&[&[0, 3, 0, 1, 0], &stream]),
    );
    out.put(
        "relay_message_reader",
        "spare",
        &cat(&[&[2, 7, 0, 1, 0], &stream]),
    );
    out.put(
        "relay_message_reader",
        "generated",
        &[1, 0xff, 0xff, 1, 0, 0xff, 0xff, 2, 0x10, 0x00, 1],
    );
    out.put("relay_socks", "greeting", &[0, 5, 1, 0]);
    out.put("relay_socks", "greeting2", &[0, 5, 2, 2, 0]);
    out.put(
        "relay_socks",
        "udp_associate",
        &[1, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0],
    );
    out.put("relay_socks", "bind", &[1, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80]);
    out.put(
        "relay_http_connect",
        "get",
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    out.put(
        "relay_http_connect",
        "v6",
        b"CONNECT [::1]:443 HTTP/1.0\r\n\r\n",
    );
    // The replay guard: window, clock, start, capacity, then checks.
    out.put(
        "relay_replay",
        "0",
        &[
            10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 0, 1, 0, 0, 2, 1, 3, 1, 1, 0, 0, 0,
        ],
    );
    let max = u64::MAX.to_le_bytes();
    out.put(
        "relay_replay",
        "far",
        &cat(&[&[10; 20], &[1, 0], &max, &[0; 8]]),
    );

    // Configurations.
    let contrib = fs::read_to_string(repo().join("contrib/braid.toml")).unwrap();
    out.put("daemon_config", "contrib", contrib.as_bytes());
    out.put("daemon_config", "empty", b"");
    out.put(
        "daemon_config",
        "interfaces",
        b"mode = \"server\"\n[[interface]]\nname = \"wlan*\"\nflags = [\"subflow\", \"backup\"]\n[[interface]]\nname = \"eth0\"\n",
    );
    let relay_cfg = relay_config(&contrib, &client_key, &relay_key);
    out.put("relay_config", "contrib", relay_cfg.as_bytes());
    out.put("relay_config", "contrib_raw", contrib.as_bytes());
    out.put(
        "relay_config",
        "client",
        format!(
            "[relay.client]\nrelay = \"relay.example.net:7000\"\nrelay_public_key = \"{}\"\nkey_file = \"/etc/braid/c.key\"\ntransparent = true\nscope = \"uid:1000\"\nexclude = [\"192.168.0.0/16\"]\nquic = \"relay\"\n",
            relay_key.public().to_text()
        )
        .as_bytes(),
    );
    out.put("daemon_control", "status", b"{\"cmd\":\"status\"}\n");
    out.put("daemon_control", "reload", b"{\"cmd\":\"reload\"}");
    out.put(
        "daemon_control",
        "reply",
        b"{\"ok\":false,\"error\":\"bad request\",\"status\":{\"a\":[1,2.5,null]}}",
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The commented `[relay.*]` sections of contrib/braid.toml, uncommented,
/// with real keys.
fn relay_config(contrib: &str, client: &PrivateKey, relay: &PrivateKey) -> String {
    let mut text = String::new();
    let mut on = false;
    for line in contrib.lines() {
        if line.starts_with("# [relay") || line.starts_with("# [[relay") {
            on = true;
        }
        if !on {
            continue;
        }
        let l = line.strip_prefix("# ").unwrap_or(line);
        if l.starts_with('[') || l.contains(" = ") {
            text.push_str(l);
            text.push('\n');
        }
    }
    let mut keys = [client.public().to_text(), relay.public().to_text()].into_iter();
    let mut out = String::new();
    for line in text.lines() {
        if line.contains("\"...\"") {
            let k = keys.next().unwrap_or_default();
            out.push_str(&line.replace("\"...\"", &format!("\"{k}\"")));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn kernel_synthetic(out: &mut Out) {
    // vmlinux BTF, cut to its first types and strings.
    if let Ok(mut f) = fs::File::open("/sys/kernel/btf/vmlinux") {
        let mut d = Vec::new();
        f.read_to_end(&mut d).unwrap();
        let rd = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as usize;
        let (hdr, toff, tlen, soff) = (rd(4), rd(8), rd(12), rd(16));
        let types = &d[hdr + toff..hdr + toff + tlen.min(1500)];
        let strings = &d[hdr + soff..hdr + soff + 2000];
        let mut blob = d[..24].to_vec();
        blob[4..8].copy_from_slice(&24u32.to_le_bytes());
        blob[8..12].copy_from_slice(&0u32.to_le_bytes());
        blob[12..16].copy_from_slice(&(types.len() as u32).to_le_bytes());
        blob[16..20].copy_from_slice(&(types.len() as u32).to_le_bytes());
        blob[20..24].copy_from_slice(&(strings.len() as u32).to_le_bytes());
        blob.truncate(24);
        blob.extend_from_slice(types);
        blob.extend_from_slice(strings);
        let name = b"update_socket_protocol";
        out.put(
            "kernel_btf",
            "vmlinux_head",
            &cat(&[&[name.len() as u8], name, &blob]),
        );
    }
    // A hand-made BTF: INT, FUNC_PROTO, FUNC "f".
    let mut types = Vec::new();
    for (name_off, info, extra) in [
        (0u32, 1u32 << 24, 4usize),
        (0, 13 << 24, 0),
        (1, 12 << 24, 0),
    ] {
        types.extend_from_slice(&name_off.to_le_bytes());
        types.extend_from_slice(&info.to_le_bytes());
        types.extend_from_slice(&0u32.to_le_bytes());
        types.extend(std::iter::repeat_n(0, extra));
    }
    let strings = b"\0f\0";
    let mut blob = vec![0x9f, 0xeb, 1, 0];
    for v in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&v.to_le_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(strings);
    out.put("kernel_btf", "synthetic", &cat(&[&[1, b'f'], &blob]));
    if let Ok(text) = fs::read_to_string("/proc/net/netstat") {
        out.put(
            "kernel_netstat",
            "proc",
            &cat(&[&[8], b"MPTcpExt", text.as_bytes()]),
        );
        out.put(
            "kernel_netstat",
            "tcp",
            &cat(&[&[6], b"TcpExt", text.as_bytes()]),
        );
    }
    // tcp_info of a loopback TCP connection.
    if let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") {
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut buf = vec![0u8; 248];
        let n = getsockopt(c.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut buf);
        out.put("kernel_info", "tcp_info", &cat(&[&[0], &buf[..n]]));
    }
    // Netlink attributes and messages shaped as the kernel's.
    let mut ep = Vec::new();
    braid_kernel::push_attr(&mut ep, 1, &2u16.to_ne_bytes());
    braid_kernel::push_attr(&mut ep, 2, &[3]);
    braid_kernel::push_attr(&mut ep, 3, &[10, 0, 0, 1]);
    braid_kernel::push_attr(&mut ep, 6, &1u32.to_ne_bytes());
    braid_kernel::push_attr(&mut ep, 7, &2i32.to_ne_bytes());
    out.put("kernel_pm_replies", "endpoint_attrs", &cat(&[&[2], &ep]));
    out.put(
        "kernel_pm_replies",
        "roundtrip",
        &cat(&[&[3], &[1, 10, 0, 0, 1, 7, 1, 0x50, 0, 2, 0, 0, 0]]),
    );
    let mut comment = vec![1, 2, 9, 9, 0, 6];
    comment.extend_from_slice(b"hello\0");
    out.put("kernel_nft", "comment", &cat(&[&[1], &comment]));
    let mut err = vec![0u8; 16];
    braid_kernel::push_attr(
        &mut err,
        1,
        b"Could not process rule: No such file or directory\0",
    );
    out.put(
        "kernel_nft",
        "error_text",
        &cat(&[&[2], &(0x100u16 | 0x200).to_ne_bytes(), &err]),
    );
    out.put(
        "kernel_pm_event_roundtrip",
        "0",
        &[10, 1, 0xef, 0xbe, 0xad, 0xde, 1, 2, 0, 1, 1, 10, 0, 0, 1],
    );
    out.put(
        "kernel_nft_roundtrip",
        "0",
        &[3, 0, 6, 3, 0x01, 0xbb, 2, 1, 0x59, 0x1b, 0, 0],
    );
}

fn getsockopt(fd: i32, level: i32, name: i32, buf: &mut [u8]) -> usize {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for len bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    if rc < 0 {
        0
    } else {
        len as usize
    }
}

// ---------------------------------------------------------------------------
// Live kernel answers.

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    if !st.success() {
        eprintln!("seeds: '{cmd}' failed");
    }
}

fn bytes_of<T: NetlinkSerializable + std::fmt::Debug>(payload: T, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

fn open(proto: isize) -> Socket {
    let mut s = Socket::new(proto).unwrap();
    s.bind_auto().unwrap();
    s.connect(&netlink_sys::SocketAddr::new(0, 0)).unwrap();
    let _ = s.set_ext_ack(true);
    let _ = s.set_cap_ack(true);
    s
}

/// Every datagram answering `request` (sequence `seq`), until DONE or an
/// error/ACK message.
fn exchange(sock: &Socket, request: &[u8], seq: u32) -> Vec<Vec<u8>> {
    sock.send(request, 0).unwrap();
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(1 << 16);
        if sock.recv(&mut buf, 0).is_err() {
            break;
        }
        let mut done = false;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            let s = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
            if s == seq && (kind == 2 || kind == 3) {
                done = true;
            }
            if len < 16 {
                break;
            }
            at += (len + 3) & !3;
        }
        out.push(buf);
        if done || out.len() > 64 {
            break;
        }
    }
    out
}

fn with_seq(prefix: &[u8], seq: u32, d: &[u8]) -> Vec<u8> {
    cat(&[prefix, &seq.to_ne_bytes(), d])
}

fn drain(sock: &Socket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(1 << 16);
        match sock.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => out.push(buf),
            Err(_) => break,
        }
    }
    out
}

fn kernel_live(out: &mut Out) {
    // SAFETY: called before any thread is started.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("seeds: no network namespace (not root?): kernel answers skipped");
        return;
    }
    sh("ip link set lo up");
    sh("ip addr add 127.0.0.2/8 dev lo 2>/dev/null; true");

    // rtnetlink monitor, then changes.
    let mut mon = Socket::new(protocols::NETLINK_ROUTE).unwrap();
    mon.bind_auto().unwrap();
    for g in [1, 5, 7, 9, 11] {
        mon.add_membership(g).unwrap();
    }
    sh("ip link add d0 type veth peer name d0p && ip link set d0p up && ip link set d0 up && ip addr add 10.9.0.1/24 dev d0 && ip -6 addr add fd09::1/64 dev d0 nodad && ip route add default via 10.9.0.254 dev d0 initcwnd 20 && ip -6 route add default via fd09::fe dev d0");
    sh("ip link add d1 type veth peer name d1p && ip link set d1p up && ip link set d1 up && ip addr add 10.8.0.1/24 dev d1 && ip route add default table 100 nexthop via 10.9.0.253 dev d0 nexthop via 10.8.0.254 dev d1");
    sh("ip addr add 192.0.2.1 peer 192.0.2.2 dev d1 && ip link set d1 down && ip link set d1 up");
    for (i, d) in drain(&mon).iter().enumerate() {
        out.put("kernel_rtnl", &format!("monitor{i}"), &cat(&[&[0], d]));
    }
    // rtnetlink dumps.
    let rt = open(protocols::NETLINK_ROUTE);
    let mut seq = 10;
    let mut rtdump = |m: RouteNetlinkMessage, name: &str, out: &mut Out| {
        seq += 1;
        for (i, d) in exchange(&rt, &bytes_of(m, NLM_F_REQUEST | NLM_F_DUMP, seq), seq)
            .iter()
            .enumerate()
        {
            out.put(
                "kernel_rtnl",
                &format!("{name}{i}"),
                &with_seq(&[1], seq, d),
            );
        }
    };
    rtdump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        "links",
        out,
    );
    rtdump(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        "addresses",
        out,
    );
    for (fam, name) in [
        (AddressFamily::Inet, "routes4"),
        (AddressFamily::Inet6, "routes6"),
    ] {
        let mut m = RouteMessage::default();
        m.header.address_family = fam;
        rtdump(RouteNetlinkMessage::GetRoute(m), name, out);
    }
    drain(&mon);

    // Generic netlink: the mptcp_pm family and its commands.
    let gn = open(protocols::NETLINK_GENERIC);
    let mut family_id = 0u16;
    let mut events_group = None;
    for (name, tag) in [("mptcp_pm", "family"), ("no_such_family", "nofamily")] {
        seq += 1;
        let mut msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
        });
        msg.finalize();
        for (i, d) in exchange(&gn, &bytes_of(msg, NLM_F_REQUEST | NLM_F_ACK, seq), seq)
            .iter()
            .enumerate()
        {
            out.put(
                "kernel_pm_replies",
                &format!("{tag}{i}"),
                &with_seq(&[0], seq, d),
            );
            let mut replies: Vec<GenlMessage<GenlCtrl>> = Vec::new();
            let _ =
                braid_kernel::decode_replies(d, seq, braid_kernel::Op::ResolveFamily, &mut replies);
            for r in replies {
                if let Ok(f) = braid_kernel::genl::family_from_reply(r) {
                    family_id = f.id;
                    events_group = f.groups.get("mptcp_pm_events").copied();
                }
            }
        }
    }
    let mut ev = Socket::new(protocols::NETLINK_GENERIC).unwrap();
    ev.bind_auto().unwrap();
    if let Some(g) = events_group {
        ev.add_membership(g).unwrap();
    }
    sh("ip mptcp limits set subflows 4 add_addr_accepted 4");
    sh("ip mptcp endpoint add 127.0.0.2 dev lo id 7 subflow");
    sh("ip mptcp endpoint add 10.9.0.1 dev d0 id 8 signal backup");
    sh("ip mptcp endpoint add fd09::1 dev d0 id 9 signal");
    let pm = |cmd: u8, attrs: Vec<u8>, flags: u16, seq: u32| {
        let mut msg = GenlMessage::from_payload(braid_kernel::genl::PmPayload {
            family_id,
            cmd,
            attrs,
        });
        msg.finalize();
        bytes_of(msg, flags, seq)
    };
    let id_attr = |id: u8| braid_kernel::pm::encode_addr_attr(None, Some(id), None, None, None);
    for (cmd, attrs, flags, tag) in [
        (3u8, vec![], NLM_F_REQUEST | NLM_F_DUMP, "endpoints"),
        (3, id_attr(7), NLM_F_REQUEST | NLM_F_ACK, "endpoint7"),
        (3, id_attr(77), NLM_F_REQUEST | NLM_F_ACK, "noendpoint"),
        (6, vec![], NLM_F_REQUEST | NLM_F_ACK, "limits"),
    ] {
        seq += 1;
        for (i, d) in exchange(&gn, &pm(cmd, attrs, flags, seq), seq)
            .iter()
            .enumerate()
        {
            out.put(
                "kernel_pm_replies",
                &format!("{tag}{i}"),
                &with_seq(&[1], seq, d),
            );
        }
    }

    // An MPTCP connection over loopback: events, sock_diag, MPTCP_FULL_INFO.
    let addr: SocketAddr = "127.0.0.1:7411".parse().unwrap();
    if let Ok((listener, _)) = braid_kernel::socket::listen(addr) {
        let (mut client, _) = braid_kernel::socket::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        server.read_exact(&mut b).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        full_info(out, client.as_raw_fd());
        let sd = open(protocols::NETLINK_SOCK_DIAG);
        for (proto, tag) in [(6u32, "tcp"), (262, "mptcp")] {
            seq += 1;
            let mut req = vec![0u8; 56];
            req[0] = libc::AF_INET as u8;
            req[1] = proto.min(255) as u8;
            req[2] = 1 << 1;
            req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
            req[48..56].copy_from_slice(&[0xff; 8]);
            if proto > 255 {
                braid_kernel::push_attr(&mut req, 3, &proto.to_ne_bytes());
            }
            let msg = braid_fuzz::nl_message(20, NLM_F_REQUEST | NLM_F_DUMP, seq, &req);
            for (i, d) in exchange(&sd, &msg, seq).iter().enumerate() {
                out.put(
                    "kernel_sock_diag",
                    &format!("{tag}{i}"),
                    &cat(&[&seq.to_ne_bytes(), d]),
                );
            }
        }
        drop(client);
        drop(server);
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, d) in drain(&ev).iter().enumerate() {
        let cmd = d.get(16).copied().unwrap_or(0);
        out.put(
            "kernel_pm_events",
            &format!("{i}"),
            &cat(&[&family_id.to_ne_bytes(), &[cmd], d]),
        );
    }

    // Braid's nf_tables table, read back; a redirected UDP flow in conntrack.
    sh("ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up && ip addr add 10.77.0.1/24 dev v0 && ip route add 10.77.1.0/24 via 10.77.0.254 dev v0");
    let rule = |matches: Vec<Match>, verdict, comment: &str| Rule {
        matches,
        verdict,
        comment: comment.into(),
    };
    let table = Table {
        name: "braid".into(),
        chains: vec![
            Chain {
                name: "nat_out".into(),
                hook: Hook::Output,
                kind: ChainKind::Nat,
                priority: -100,
                rules: vec![
                    rule(
                        vec![Match::Mark {
                            mask: 0x00ff_0000,
                            value: 0x00b2_0000,
                        }],
                        Verdict::Return,
                        "the client's own sockets",
                    ),
                    rule(
                        vec![
                            Match::Destination {
                                prefix: "10.77.0.0/23".parse().unwrap(),
                            },
                            Match::Protocol { number: 17 },
                            Match::DestinationPort { port: 443 },
                        ],
                        Verdict::Redirect { port: 7002 },
                        "quic to the relay",
                    ),
                    rule(
                        vec![Match::Destination {
                            prefix: "fd00::/8".parse().unwrap(),
                        }],
                        Verdict::Return,
                        "",
                    ),
                    rule(
                        vec![
                            Match::SocketUid { uid: 1000 },
                            Match::Protocol { number: 6 },
                        ],
                        Verdict::Redirect { port: 7001 },
                        "tcp of uid 1000",
                    ),
                ],
            },
            Chain {
                name: "filter_out".into(),
                hook: Hook::Output,
                kind: ChainKind::Filter,
                priority: 0,
                rules: vec![rule(
                    vec![
                        Match::Family {
                            family: nft::Family::Ipv4,
                        },
                        Match::Protocol { number: 17 },
                        Match::DestinationPort { port: 443 },
                    ],
                    Verdict::RejectPortUnreachable,
                    "quic refused",
                )],
            },
        ],
    };
    if let Err(e) = nft::install(&table) {
        eprintln!("seeds: nft install: {e}");
    }
    let nf = open(protocols::NETLINK_NETFILTER);
    let nft_msg = |m: NfTablesMessage| {
        NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), m)
    };
    seq += 1;
    let get = nft_msg(NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![RuleAttribute::Table("braid".into())],
    }));
    for (i, d) in exchange(&nf, &bytes_of(get, NLM_F_REQUEST | NLM_F_DUMP, seq), seq)
        .iter()
        .enumerate()
    {
        out.put("kernel_nft", &format!("rules{i}"), &with_seq(&[0], seq, d));
    }
    seq += 1;
    let get = nft_msg(NfTablesMessage::GetTable(TableMessage {
        attributes: vec![],
    }));
    for (i, d) in exchange(&nf, &bytes_of(get, NLM_F_REQUEST | NLM_F_DUMP, seq), seq)
        .iter()
        .enumerate()
    {
        out.put("kernel_nft", &format!("tables{i}"), &with_seq(&[0], seq, d));
    }

    let relay = UdpSocket::bind("127.0.0.1:7002").unwrap();
    let sender = UdpSocket::bind("10.77.0.1:0").unwrap();
    relay
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = sender.send_to(b"hello", "10.77.1.5:443");
    let mut b = [0u8; 16];
    if let Ok((_, peer)) = relay.recv_from(&mut b) {
        let local: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let head = |l: SocketAddr, p: SocketAddr| {
            let v4 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => cat(&[
                    &[1],
                    &u32::from(*a.ip()).to_le_bytes(),
                    &a.port().to_le_bytes(),
                ]),
                SocketAddr::V6(a) => cat(&[
                    &[0],
                    &u128::from(*a.ip()).to_le_bytes(),
                    &a.port().to_le_bytes(),
                ]),
            };
            cat(&[&[0], &v4(l), &v4(p)])
        };
        let req = braid_kernel::conntrack::get_request(
            braid_kernel::conntrack::Protocol::Udp,
            local,
            peer,
        )
        .unwrap();
        seq += 1;
        for (i, d) in exchange(&nf, &bytes_of(req, NLM_F_REQUEST | NLM_F_ACK, seq), seq)
            .iter()
            .enumerate()
        {
            out.put(
                "kernel_conntrack",
                &format!("get{i}"),
                &cat(&[&[0], &head(local, peer), &seq.to_le_bytes(), d]),
            );
        }
        seq += 1;
        let dump = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            ConntrackMessage::Get(vec![]),
        );
        for (i, d) in exchange(&nf, &bytes_of(dump, NLM_F_REQUEST | NLM_F_DUMP, seq), seq)
            .iter()
            .enumerate()
        {
            out.put(
                "kernel_conntrack",
                &format!("dump{i}"),
                &cat(&[&[0], &head(local, peer), &seq.to_le_bytes(), d]),
            );
        }
        out.put(
            "kernel_conntrack",
            "request",
            &cat(&[&[1], &head(local, peer)[1..]]),
        );
    } else {
        eprintln!("seeds: the redirected datagram did not arrive");
    }
}

/// MPTCP_INFO, MPTCP_FULL_INFO and the tcp_info and addresses in it.
fn full_info(out: &mut Out, fd: i32) {
    const SF: usize = 264;
    const TCP: usize = 248;
    let mut sf = vec![0u8; SF * 16];
    let mut tcp = vec![0u8; TCP * 16];
    let mut full = vec![0u8; 40 + 96];
    full[4..8].copy_from_slice(&(TCP as u32).to_ne_bytes());
    full[12..16].copy_from_slice(&(SF as u32).to_ne_bytes());
    full[20..24].copy_from_slice(&16u32.to_ne_bytes());
    full[24..32].copy_from_slice(&(sf.as_mut_ptr() as u64).to_ne_bytes());
    full[32..40].copy_from_slice(&(tcp.as_mut_ptr() as u64).to_ne_bytes());
    let n = getsockopt(fd, 284, 4, &mut full);
    if n == 0 {
        eprintln!("seeds: no MPTCP_FULL_INFO");
        return;
    }
    // Pointers are this process's: zero them in the seed.
    full[24..40].fill(0);
    out.put(
        "kernel_info",
        "full_info",
        &cat(&[&[3], &(n as u16).to_ne_bytes(), &full, &sf[..2 * SF]]),
    );
    out.put("kernel_info", "mptcp_info", &cat(&[&[1], &full[40..n]]));
    out.put(
        "kernel_info",
        "subflow_tcp_info",
        &cat(&[&[0], &tcp[..TCP]]),
    );
    out.put("kernel_info", "sockaddr4", &cat(&[&[2], &sf[8..136]]));
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("fuzz/corpus"));
    let mut out = Out { dir, count: 0 };
    kernel_live(&mut out);
    kernel_synthetic(&mut out);
    relay(&mut out);
    println!("{} seeds written under {}", out.count, out.dir.display());
}
