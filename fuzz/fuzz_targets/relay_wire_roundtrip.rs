//! Structured: arbitrary relay messages built from their parts, through the
//! crate's encoders and back through its decoders: `Request` (every kind,
//! any timestamp, any valid destination, any early data), `Reply` (any
//! status and UTF-8 reason up to 255 bytes), `Destination`, frames, and the
//! length prefix.
//!
//! Asserts: decode(encode(x)) == x for each.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use braid_fuzz::destination;
use braid_relay::wire::{
    length_prefix, parse_frame, Destination, FrameKind, Kind, Reply, Request, Status,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(dest) = destination(&mut u) else {
        return;
    };
    let mut enc = Vec::new();
    dest.encode(&mut enc);
    assert_eq!(Destination::decode(&enc), Ok((dest.clone(), enc.len())));

    let kind = *u
        .choose(&[Kind::Tcp, Kind::Dns, Kind::Ping, Kind::Udp])
        .unwrap_or(&Kind::Tcp);
    let timestamp_ms = u64::arbitrary(&mut u).unwrap_or(0);
    let early_data = Vec::<u8>::arbitrary(&mut u).unwrap_or_default();
    let r = Request {
        kind,
        timestamp_ms,
        destination: dest,
        early_data,
    };
    assert_eq!(Request::decode(&r.encode()), Ok(r));

    let status = Status::from_u8(u.int_in_range(0..=7).unwrap_or(0)).unwrap();
    let mut reason = String::arbitrary(&mut u).unwrap_or_default();
    while reason.len() > 255 {
        reason.pop();
    }
    let reply = Reply { status, reason };
    assert_eq!(Reply::decode(&reply.encode()), Ok(reply));

    let frame_kind = *u
        .choose(&[FrameKind::Data, FrameKind::End, FrameKind::Reset])
        .unwrap_or(&FrameKind::Data);
    let mut frame = vec![frame_kind as u8];
    if frame_kind == FrameKind::Data {
        frame.extend_from_slice(u.take_rest());
    }
    let (k, d) = parse_frame(&frame).unwrap();
    assert_eq!((k, d), (frame_kind, &frame[1..]));
    let n = frame.len().min(u16::MAX as usize);
    assert_eq!(u16::from_be_bytes(length_prefix(n)) as usize, n);
});
