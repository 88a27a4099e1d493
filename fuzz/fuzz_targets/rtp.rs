//! Fuzzes the RTP parser, RFC 4733 events and the jitter buffer: any datagram is a packet or an
//! error, a parsed header writes back to itself, and the buffer never panics or grows unbounded.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/line/sip/rtp.rs"]
mod rtp;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input is a run of datagrams, each prefixed by its length byte.
    let mut jitter = rtp::JitterBuffer::new(2, 10);
    let mut dtmf = rtp::DtmfReceiver::default();
    let mut rest = data;
    let mut arrival = 0.0;
    while let Some((&length, tail)) = rest.split_first() {
        let (datagram, after) = tail.split_at(usize::from(length).min(tail.len()));
        rest = after;
        arrival += f64::from(length % 41);
        let Ok((header, payload)) = rtp::parse(datagram) else {
            continue;
        };
        let written = rtp::write(&header, payload);
        assert_eq!(rtp::parse(&written), Ok((header, payload)));
        let _ = dtmf.receive(&header, payload);
        jitter.push(header.sequence, header.timestamp, 8_000, arrival, payload.to_vec());
        if length % 2 == 0 {
            let _ = jitter.pop();
        }
    }
    for _ in 0..300 {
        let _ = jitter.pop();
    }
});
