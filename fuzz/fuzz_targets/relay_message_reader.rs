//! `wire::MessageReader`: length-prefixed messages reassembled from a byte
//! stream read in arbitrary pieces, as the relay and its client read their
//! tunnels (into `spare()` then `filled()`, or with `push()`).
//!
//! Input: a mode byte, then either the raw stream and the sizes of the
//! reads, or a list of message lengths (up to the 65535 maximum, contents
//! generated) and the sizes of the reads.
//! Asserts: no panic; the messages come out whole, in order, equal to a
//! reference split of the stream; `peek_length` and `pending` agree with
//! it; there is always room to read while the complete messages are taken
//! (no stall, no growth: the buffer is fixed).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use braid_relay::wire::{length_prefix, MessageReader, LENGTH_PREFIX};
use libfuzzer_sys::fuzz_target;

/// The end offsets of the complete messages a stream holds, in order (a
/// prefix of the stream holds those that end within it).
fn reference(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while stream.len() - at >= LENGTH_PREFIX {
        let n = u16::from_be_bytes([stream[at], stream[at + 1]]) as usize;
        if stream.len() - at - LENGTH_PREFIX < n {
            break;
        }
        at += LENGTH_PREFIX + n;
        ends.push(at);
    }
    ends
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mode) = u8::arbitrary(&mut u) else {
        return;
    };
    let Ok(sizes) = Vec::<u16>::arbitrary(&mut u) else {
        return;
    };
    let stream: Vec<u8> = if mode & 1 == 0 {
        u.take_rest().to_vec()
    } else {
        let mut s = Vec::new();
        let lens = Vec::<u16>::arbitrary(&mut u).unwrap_or_default();
        for (i, n) in lens.iter().take(8).enumerate() {
            s.extend_from_slice(&length_prefix(*n as usize));
            s.extend((0..*n as usize).map(|j| (i * 31 + j) as u8));
        }
        if let Some(cut) = u16::arbitrary(&mut u)
            .ok()
            .filter(|c| (*c as usize) < s.len())
        {
            s.truncate(s.len() - cut as usize);
        }
        s
    };
    let ends = reference(&stream);

    let mut r = MessageReader::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut rest = &stream[..];
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&u16::MAX) as usize).max(1);
        let piece = &rest[..size.min(rest.len())];
        let n = if mode & 2 == 0 {
            r.push(piece)
        } else {
            let spare = r.spare();
            let n = piece.len().min(spare.len());
            spare[..n].copy_from_slice(&piece[..n]);
            r.filled(n);
            n
        };
        assert!(n > 0, "no room to read with every complete message taken");
        rest = &rest[n..];
        while let Some(m) = r.next_message() {
            got.push(m.to_vec());
        }
        let consumed = stream.len() - rest.len();
        let so_far = ends.partition_point(|e| *e <= consumed);
        let partial = consumed - so_far.checked_sub(1).map_or(0, |i| ends[i]);
        assert_eq!(got.len(), so_far);
        assert_eq!(r.pending(), partial);
        let expected_peek = (partial >= LENGTH_PREFIX).then(|| {
            let at = consumed - partial;
            u16::from_be_bytes([stream[at], stream[at + 1]]) as usize
        });
        assert_eq!(r.peek_length(), expected_peek);
    }
    assert_eq!(got.len(), ends.len());
    let mut start = 0;
    for (g, end) in got.iter().zip(&ends) {
        assert_eq!(&g[..], &stream[start + LENGTH_PREFIX..*end]);
        start = *end;
    }
    assert_eq!(r.pending(), stream.len() - start);
});
