//! Structured: a whole relay handshake with arbitrary contents. A request
//! (any kind, destination, early data) is encoded into the client's first
//! message (`Initiator::first_message`), read by the relay
//! (`Responder::read_first`, `Request::decode`), answered with an
//! arbitrary reply (`Responder::reply`, `Initiator::read_reply`,
//! `Reply::decode`), then frames go both ways (`Sealer`, `Opener`,
//! `parse_frame`). One byte of the first message, chosen by the input, is
//! then flipped.
//!
//! Asserts: every decode gives back exactly what was encoded; the flipped
//! message is refused (`CryptoError::Handshake`).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use braid_fuzz::destination;
use braid_relay::keys::PrivateKey;
use braid_relay::noise::{CryptoError, Initiator, Responder, TAG_LEN};
use braid_relay::wire::{early_data_room, parse_frame, FrameKind, Kind, Reply, Request, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let relay = PrivateKey::from_bytes([7; 32]);
    let client = PrivateKey::from_bytes([9; 32]);
    let Ok(dest) = destination(&mut u) else {
        return;
    };
    let kind = *u
        .choose(&[Kind::Tcp, Kind::Dns, Kind::Ping, Kind::Udp])
        .unwrap_or(&Kind::Tcp);
    let mut early_data = Vec::<u8>::arbitrary(&mut u).unwrap_or_default();
    early_data.truncate(early_data_room(&dest));
    let request = Request {
        kind,
        timestamp_ms: u64::arbitrary(&mut u).unwrap_or(0),
        destination: dest,
        early_data,
    };
    let mut i = Initiator::new(&client, &relay.public()).unwrap();
    let m1 = i
        .first_message(&request.encode())
        .expect("any request with early data within its room fits");
    let mut r = Responder::new(&relay).unwrap();
    let first = r
        .read_first(&m1)
        .expect("the relay reads the first message");
    assert_eq!(first.client, client.public());
    assert_eq!(&first.ephemeral[..], &m1[..32]);
    assert_eq!(Request::decode(&first.payload), Ok(request));

    let status = Status::from_u8(u.int_in_range(0..=7).unwrap_or(0)).unwrap();
    let mut reason = String::arbitrary(&mut u).unwrap_or_default();
    while reason.len() > 255 {
        reason.pop();
    }
    let reply = Reply { status, reason };
    let (m2, rs) = r.reply(&reply.encode()).unwrap();
    let (p, cs) = i.read_reply(&m2).expect("the client reads the answer");
    assert_eq!(Reply::decode(&p), Ok(reply));

    let (mut cseal, mut copen) = cs.split();
    let (mut rseal, mut ropen) = rs.split();
    for _ in 0..u.int_in_range(0..=3).unwrap_or(0) {
        let len = u.int_in_range(0..=2000).unwrap_or(0);
        let mut frame = vec![FrameKind::Data as u8];
        frame.extend((0..len).map(|j| j as u8));
        let mut sealed = vec![0u8; frame.len() + TAG_LEN];
        let mut plain = vec![0u8; sealed.len()];
        let n = cseal.seal(&frame, &mut sealed).unwrap();
        let m = ropen.open(&sealed[..n], &mut plain).unwrap();
        assert_eq!(
            parse_frame(&plain[..m]).unwrap(),
            (FrameKind::Data, &frame[1..])
        );
        let n = rseal.seal(&frame, &mut sealed).unwrap();
        let m = copen.open(&sealed[..n], &mut plain).unwrap();
        assert_eq!(&plain[..m], &frame[..]);
    }

    let at = u.choose_index(m1.len()).unwrap_or(0);
    let bit = 1u8 << u.int_in_range(0..=7).unwrap_or(0);
    let mut bad = m1.clone();
    bad[at] ^= bit;
    let mut r = Responder::new(&relay).unwrap();
    assert_eq!(r.read_first(&bad).unwrap_err(), CryptoError::Handshake);
});
