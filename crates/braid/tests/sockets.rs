//! The socket helpers against the real kernel: MPTCP to MPTCP stays MPTCP,
//! MPTCP to plain TCP falls back, info is readable in both cases; sysctls
//! are per namespace and MPTCP disabled by sysctl gives plain TCP.

mod common;
use common::Netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use braid_kernel::socket::{self, ConnectionInfo, Transport};

fn echo_once(listener: TcpListener) -> std::thread::JoinHandle<(bool, Option<ConnectionInfo>)> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        let active = socket::is_mptcp_active(&s).unwrap();
        let info = socket::connection_info(&s).ok();
        // Stay open until the client has looked at its side and closed.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        (active, info)
    })
}

#[test]
fn mptcp_to_mptcp_and_to_plain_tcp() {
    let ns = Netns::new("sock");
    ns.run(|| {
        // MPTCP <-> MPTCP
        let (l, t) = socket::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(t, Transport::Mptcp);
        let addr = l.local_addr().unwrap();
        let server = echo_once(l);
        let (mut c, t) = socket::connect(addr).unwrap();
        assert_eq!(t, Transport::Mptcp);
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert!(
            socket::is_mptcp_active(&c).unwrap(),
            "MPTCP to MPTCP must not fall back"
        );
        match socket::connection_info(&c).unwrap() {
            ConnectionInfo::Mptcp { info, subflows } => {
                assert_ne!(info.token, 0);
                assert!(!info.fell_back());
                assert_eq!(subflows.len(), 1, "{subflows:?}");
                assert_eq!(subflows[0].remote, Some(addr));
                assert!(subflows[0].tcp.as_ref().is_some_and(|t| t.state == 1));
            }
            other => panic!("expected MPTCP info, got {other:?}"),
        }
        drop(c);
        let (server_active, server_info) = server.join().unwrap();
        assert!(server_active);
        assert!(matches!(server_info, Some(ConnectionInfo::Mptcp { .. })));

        // MPTCP client -> plain TCP server: falls back, and says so.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let server = echo_once(plain);
        let (mut c, t) = socket::connect(addr).unwrap();
        assert_eq!(t, Transport::Mptcp, "the socket is created as MPTCP");
        c.write_all(b"hello").unwrap();
        c.read_exact(&mut back).unwrap();
        assert!(
            !socket::is_mptcp_active(&c).unwrap(),
            "must report the fallback"
        );
        assert!(socket::mptcp_info(&c).unwrap().is_none());
        match socket::connection_info(&c).unwrap() {
            ConnectionInfo::Tcp { fell_back, tcp } => {
                assert!(fell_back);
                assert!(tcp.is_some_and(|t| t.state == 1));
            }
            other => panic!("expected a fallen-back TCP connection, got {other:?}"),
        }
        drop(c);
        let (server_active, server_info) = server.join().unwrap();
        assert!(!server_active);
        assert!(matches!(
            server_info,
            Some(ConnectionInfo::Tcp {
                fell_back: false,
                ..
            })
        ));
    });
}

#[test]
fn tokio_helpers() {
    let ns = Netns::new("tok");
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (l, t) = socket::listen_tokio("127.0.0.1:0".parse().unwrap()).unwrap();
            assert_eq!(t, Transport::Mptcp);
            let addr: SocketAddr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 3];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
                socket::is_mptcp_active(&s).unwrap()
            });
            let (mut c, t) = socket::connect_tokio(addr).await.unwrap();
            assert_eq!(t, Transport::Mptcp);
            c.write_all(b"abc").await.unwrap();
            let mut b = [0u8; 3];
            c.read_exact(&mut b).await.unwrap();
            assert!(socket::is_mptcp_active(&c).unwrap());
            assert!(server.await.unwrap());
        });
    });
}

#[test]
fn sysctls_are_per_namespace_and_disabled_mptcp_falls_back() {
    let ns = Netns::new("sysc");
    let host_before = braid_kernel::sysctl::read("enabled").unwrap();
    ns.sysctl("net.mptcp.enabled", "0");
    let inside = ns.run(|| braid_kernel::sysctl::read("net.mptcp.enabled").unwrap());
    assert_eq!(inside, "0");
    assert_eq!(
        braid_kernel::sysctl::read("enabled").unwrap(),
        host_before,
        "the host is untouched"
    );
    ns.run(|| {
        let (l, t) = socket::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(t, Transport::Tcp, "MPTCP disabled: plain TCP");
        drop(l);
    });
    let all = ns.run(|| braid_kernel::sysctl::all().unwrap());
    assert!(all
        .iter()
        .any(|(k, v)| k == "net.mptcp.enabled" && v == "0"));
    // Bad names and values are errors, not panics.
    assert!(braid_kernel::sysctl::read("../../kernel/hostname").is_err());
    let err = ns.run(|| {
        braid_kernel::sysctl::write("enabled", "banana")
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("rejected") || err.contains("Invalid"), "{err}");
}
