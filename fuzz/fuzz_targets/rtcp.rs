//! Fuzzes the RTCP compound-packet parser and reception statistics: any datagram is a list of
//! packets or an error, and a report that parsed writes back to the same report.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/line/sip/rtcp.rs"]
mod rtcp;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packets) = rtcp::parse(data) {
        for packet in packets {
            let (ssrc, info, reports) = match packet {
                rtcp::RtcpPacket::SenderReport {
                    ssrc,
                    info,
                    reports,
                } => (ssrc, Some(info), reports),
                rtcp::RtcpPacket::ReceiverReport { ssrc, reports } => (ssrc, None, reports),
                _ => continue,
            };
            let written = rtcp::write_report(ssrc, info.as_ref(), &reports, "fuzz", true);
            let again = rtcp::parse(&written).expect("the box's own report parses");
            let expected = match info {
                Some(info) => rtcp::RtcpPacket::SenderReport {
                    ssrc,
                    info,
                    reports,
                },
                None => rtcp::RtcpPacket::ReceiverReport { ssrc, reports },
            };
            assert_eq!(again.first(), Some(&expected));
        }
    }
    // The same bytes as a stream of sequence numbers and timestamps.
    let mut stats: Option<rtcp::ReceptionStats> = None;
    for (i, chunk) in data.chunks_exact(6).enumerate() {
        let sequence = u16::from_be_bytes([chunk[0], chunk[1]]);
        let timestamp = u32::from_be_bytes([chunk[2], chunk[3], chunk[4], chunk[5]]);
        let stats = stats.get_or_insert_with(|| rtcp::ReceptionStats::new(1, sequence));
        stats.packet(sequence, Some((timestamp, i as f64 * 160.0)));
        let block = stats.report(i as f64 * 0.02);
        assert!(block.cumulative_lost <= 0x7F_FFFF && block.cumulative_lost >= -0x80_0000);
    }
});
