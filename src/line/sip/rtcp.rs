//! RTCP (RFC 3550 §6): the control packets that travel beside a call's RTP. The box sends a
//! sender report with one reception report block about the peer's stream, and reads the peer's
//! sender/receiver reports and BYE. Also the reception statistics a report block is made of
//! (RFC 3550 appendix A.1, A.3, A.8). Pure data: the media loop owns the sockets and the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtcpError {
    #[error("RTCP packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("RTCP version {0}, expected 2")]
    Version(u8),
    #[error("RTCP packet {index} claims {claimed} bytes, {left} are left")]
    Length {
        index: usize,
        claimed: usize,
        left: usize,
    },
    #[error("RTCP packet {index} has padding but is not the last of its compound packet")]
    Padding { index: usize },
    #[error("RTCP packet {index} ({kind}) is shorter than its {count} items need")]
    Count {
        index: usize,
        kind: &'static str,
        count: usize,
    },
}

pub const SENDER_REPORT: u8 = 200;
pub const RECEIVER_REPORT: u8 = 201;
pub const SOURCE_DESCRIPTION: u8 = 202;
pub const GOODBYE: u8 = 203;

/// One reception report block: what a receiver saw of one source's stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start (24-bit signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles in the top 16 bits).
    pub highest_sequence: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last sender report received from the source.
    pub last_sender_report: u32,
    /// Delay since that sender report, in 1/65536 s.
    pub delay_since_last_sender_report: u32,
}

/// The sender-info part of a sender report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP timestamp (seconds since 1900 in the top 32 bits, fraction in the bottom 32).
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    Goodbye {
        sources: Vec<u32>,
    },
    /// SDES, APP, feedback and anything else the box does not read.
    Other {
        packet_type: u8,
    },
}

/// Whether a packet that came on a muxed RTP/RTCP port is RTCP (RFC 5761 §4: payload types
/// 64–95 with the marker bit set are RTCP packet types 192–223).
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && (192..=223).contains(&packet[1])
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn parse_block(bytes: &[u8]) -> ReportBlock {
    // 24-bit two's complement, sign-extended.
    let lost = (word(bytes, 4) << 8) as i32 >> 8;
    ReportBlock {
        ssrc: word(bytes, 0),
        fraction_lost: bytes[4],
        cumulative_lost: lost,
        highest_sequence: word(bytes, 8),
        jitter: word(bytes, 12),
        last_sender_report: word(bytes, 16),
        delay_since_last_sender_report: word(bytes, 20),
    }
}

fn parse_blocks(
    body: &[u8],
    count: usize,
    index: usize,
    kind: &'static str,
) -> Result<Vec<ReportBlock>, RtcpError> {
    if body.len() < count * 24 {
        return Err(RtcpError::Count { index, kind, count });
    }
    Ok(body.chunks_exact(24).take(count).map(parse_block).collect())
}

/// Parses a compound packet (RFC 3550 appendix A.2's checks: version 2 throughout, lengths that
/// add up to the datagram, padding only on the last packet). Any error drops the whole datagram.
pub fn parse(datagram: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    if datagram.len() < 8 {
        return Err(RtcpError::TooShort(datagram.len()));
    }
    let mut packets = Vec::new();
    let mut rest = datagram;
    let mut index = 0;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtcpError::Length {
                index,
                claimed: 4,
                left: rest.len(),
            });
        }
        let version = rest[0] >> 6;
        if version != 2 {
            return Err(RtcpError::Version(version));
        }
        let padded = rest[0] & 0x20 != 0;
        let count = usize::from(rest[0] & 0x1F);
        let packet_type = rest[1];
        let length = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if length > rest.len() {
            return Err(RtcpError::Length {
                index,
                claimed: length,
                left: rest.len(),
            });
        }
        let (packet, after) = rest.split_at(length);
        let mut end = length;
        if padded {
            if !after.is_empty() {
                return Err(RtcpError::Padding { index });
            }
            let pad = usize::from(packet[length - 1]);
            if pad == 0 || pad > length - 4 {
                return Err(RtcpError::Padding { index });
            }
            end -= pad;
        }
        let body = &packet[4..end];
        packets.push(match packet_type {
            SENDER_REPORT => {
                if body.len() < 24 {
                    return Err(RtcpError::Count {
                        index,
                        kind: "sender report",
                        count,
                    });
                }
                let ntp = (u64::from(word(body, 4)) << 32) | u64::from(word(body, 8));
                RtcpPacket::SenderReport {
                    ssrc: word(body, 0),
                    info: SenderInfo {
                        ntp,
                        rtp_timestamp: word(body, 12),
                        packet_count: word(body, 16),
                        octet_count: word(body, 20),
                    },
                    reports: parse_blocks(&body[24..], count, index, "sender report")?,
                }
            }
            RECEIVER_REPORT => {
                if body.len() < 4 {
                    return Err(RtcpError::Count {
                        index,
                        kind: "receiver report",
                        count,
                    });
                }
                RtcpPacket::ReceiverReport {
                    ssrc: word(body, 0),
                    reports: parse_blocks(&body[4..], count, index, "receiver report")?,
                }
            }
            GOODBYE => {
                if body.len() < count * 4 {
                    return Err(RtcpError::Count {
                        index,
                        kind: "BYE",
                        count,
                    });
                }
                RtcpPacket::Goodbye {
                    sources: (0..count).map(|i| word(body, i * 4)).collect(),
                }
            }
            other => RtcpPacket::Other { packet_type: other },
        });
        rest = after;
        index += 1;
    }
    Ok(packets)
}

fn header(packet: &mut Vec<u8>, count: usize, packet_type: u8) -> usize {
    let start = packet.len();
    packet.extend_from_slice(&[0x80 | (count as u8 & 0x1F), packet_type, 0, 0]);
    start
}

/// Fills in the length word of the packet that starts at `start` (padding it to 32 bits).
fn finish(packet: &mut Vec<u8>, start: usize) {
    while !(packet.len() - start).is_multiple_of(4) {
        packet.push(0);
    }
    let words = ((packet.len() - start) / 4 - 1) as u16;
    packet[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

fn push_block(packet: &mut Vec<u8>, block: &ReportBlock) {
    packet.extend_from_slice(&block.ssrc.to_be_bytes());
    let lost = (block.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0xFF_FFFF;
    packet.extend_from_slice(&((u32::from(block.fraction_lost) << 24) | lost).to_be_bytes());
    for value in [
        block.highest_sequence,
        block.jitter,
        block.last_sender_report,
        block.delay_since_last_sender_report,
    ] {
        packet.extend_from_slice(&value.to_be_bytes());
    }
}

fn push_cname(packet: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let start = header(packet, 1, SOURCE_DESCRIPTION);
    packet.extend_from_slice(&ssrc.to_be_bytes());
    let name = &cname.as_bytes()[..cname.len().min(255)];
    packet.extend_from_slice(&[1, name.len() as u8]);
    packet.extend_from_slice(name);
    packet.push(0); // end of the item list, then padding to 32 bits
    finish(packet, start);
}

/// A compound report: a sender report when `info` is given (the box sent audio since the last
/// report), else a receiver report; with at most 31 report blocks, then the SDES CNAME every
/// compound packet must carry, then a BYE when the box is leaving.
pub fn write_report(
    ssrc: u32,
    info: Option<&SenderInfo>,
    blocks: &[ReportBlock],
    cname: &str,
    goodbye: bool,
) -> Vec<u8> {
    let blocks = &blocks[..blocks.len().min(31)];
    let mut packet = Vec::with_capacity(128);
    let start = match info {
        Some(info) => {
            let start = header(&mut packet, blocks.len(), SENDER_REPORT);
            packet.extend_from_slice(&ssrc.to_be_bytes());
            packet.extend_from_slice(&info.ntp.to_be_bytes());
            for value in [info.rtp_timestamp, info.packet_count, info.octet_count] {
                packet.extend_from_slice(&value.to_be_bytes());
            }
            start
        }
        None => {
            let start = header(&mut packet, blocks.len(), RECEIVER_REPORT);
            packet.extend_from_slice(&ssrc.to_be_bytes());
            start
        }
    };
    for block in blocks {
        push_block(&mut packet, block);
    }
    finish(&mut packet, start);
    push_cname(&mut packet, ssrc, cname);
    if goodbye {
        let start = header(&mut packet, 1, GOODBYE);
        packet.extend_from_slice(&ssrc.to_be_bytes());
        finish(&mut packet, start);
    }
    packet
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The wall clock as a 64-bit NTP timestamp.
pub fn ntp_now() -> u64 {
    ntp_of(SystemTime::now())
}

pub fn ntp_of(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// The middle 32 bits of an NTP timestamp, as report blocks carry it.
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A duration in the 1/65536 s units of the DLSR field.
pub fn to_short_units(duration: Duration) -> u32 {
    (duration.as_secs_f64() * 65_536.0).min(f64::from(u32::MAX)) as u32
}

/// Round-trip time from a report block about the box's stream received at `arrival_ntp`
/// (RFC 3550 §6.4.1: A − LSR − DLSR); `None` when the peer has not had a sender report yet.
pub fn round_trip(block: &ReportBlock, arrival_ntp: u64) -> Option<Duration> {
    if block.last_sender_report == 0 {
        return None;
    }
    let units = ntp_middle(arrival_ntp)
        .wrapping_sub(block.last_sender_report)
        .wrapping_sub(block.delay_since_last_sender_report);
    // A negative result (clock steps, bogus fields) wraps to a huge value: not believed.
    (units < 65_536 * 60).then(|| Duration::from_secs_f64(f64::from(units) / 65_536.0))
}

/// What the box has seen of one source's RTP stream, for its report blocks.
#[derive(Debug, Clone)]
pub struct ReceptionStats {
    ssrc: u32,
    base_sequence: u32,
    max_sequence: u16,
    /// Sequence-number wraps, shifted into the top 16 bits.
    cycles: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units (RFC 3550 §6.4.1).
    jitter: f64,
    last_transit: Option<f64>,
    /// The middle of the last sender report's NTP time, and when it came (local seconds).
    last_sender_report: Option<(u32, f64)>,
}

/// A jump in sequence numbers beyond this is a restarted stream, not loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;

impl ReceptionStats {
    pub fn new(ssrc: u32, sequence: u16) -> ReceptionStats {
        ReceptionStats {
            ssrc,
            base_sequence: u32::from(sequence),
            max_sequence: sequence,
            cycles: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_transit: None,
            last_sender_report: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Counts one packet; `arrival` and the timestamp are compared for jitter when `timing` is
    /// given as (RTP timestamp, arrival in timestamp units) — audio only, since RFC 4733 events
    /// repeat their timestamp.
    pub fn packet(&mut self, sequence: u16, timing: Option<(u32, f64)>) {
        let delta = sequence.wrapping_sub(self.max_sequence);
        if self.received == 0 {
            self.max_sequence = sequence;
        } else if delta == 0 {
            // A duplicate: counted, as RFC 3550 does, so loss can go negative.
        } else if delta < MAX_DROPOUT {
            if sequence < self.max_sequence {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_sequence = sequence;
        } else if delta <= u16::MAX - 100 {
            // A very large jump: the sender restarted its sequence; start counting again.
            *self = ReceptionStats {
                last_sender_report: self.last_sender_report,
                ..ReceptionStats::new(self.ssrc, sequence)
            };
        }
        // Otherwise a late or reordered packet: it counts as received.
        self.received += 1;
        if let Some((timestamp, arrival)) = timing {
            let transit = arrival - f64::from(timestamp);
            if let Some(last) = self.last_transit {
                let d = (transit - last).abs();
                // A jump of more than a minute is a timestamp restart, not jitter.
                if d < 8_000.0 * 60.0 {
                    self.jitter += (d - self.jitter) / 16.0;
                }
            }
            self.last_transit = Some(transit);
        }
    }

    /// A sender report from this source arrived at local time `now_s`.
    pub fn sender_report(&mut self, ntp: u64, now_s: f64) {
        self.last_sender_report = Some((ntp_middle(ntp), now_s));
    }

    pub fn extended_highest(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_sequence))
    }

    pub fn expected(&self) -> u64 {
        (u64::from(self.extended_highest()) + 1).saturating_sub(u64::from(self.base_sequence))
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The report block for this source at local time `now_s`; starts the next interval.
    pub fn report(&mut self, now_s: f64) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sender_report, delay) = match self.last_sender_report {
            Some((middle, at)) => (
                middle,
                to_short_units(Duration::from_secs_f64((now_s - at).max(0.0))),
            ),
            None => (0, 0),
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7F_FFFF) as i32,
            highest_sequence: self.extended_highest(),
            jitter: self.jitter as u32,
            last_sender_report,
            delay_since_last_sender_report: delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0xDEAD_BEEF,
            fraction_lost: 64,
            cumulative_lost: -3,
            highest_sequence: 0x0001_0005,
            jitter: 77,
            last_sender_report: 0x1234_5678,
            delay_since_last_sender_report: 65_536,
        }
    }

    #[test]
    fn a_sender_report_with_cname_and_bye_parses_back() {
        let info = SenderInfo {
            ntp: 0x0102_0304_0506_0708,
            rtp_timestamp: 9,
            packet_count: 10,
            octet_count: 1600,
        };
        let packet = write_report(42, Some(&info), &[block()], "callbox@box", true);
        assert_eq!(packet.len() % 4, 0);
        assert!(is_rtcp(&packet));
        let parsed = parse(&packet).unwrap();
        assert_eq!(
            parsed,
            vec![
                RtcpPacket::SenderReport {
                    ssrc: 42,
                    info,
                    reports: vec![block()],
                },
                RtcpPacket::Other {
                    packet_type: SOURCE_DESCRIPTION
                },
                RtcpPacket::Goodbye { sources: vec![42] },
            ]
        );
    }

    #[test]
    fn a_receiver_report_without_blocks_parses_back() {
        let packet = write_report(7, None, &[], "x", false);
        assert_eq!(
            parse(&packet).unwrap()[0],
            RtcpPacket::ReceiverReport {
                ssrc: 7,
                reports: vec![]
            }
        );
    }

    #[test]
    fn malformed_compound_packets_are_errors() {
        let good = write_report(1, None, &[block()], "cname", false);
        assert_eq!(parse(&good[..6]), Err(RtcpError::TooShort(6)));
        let mut v1 = good.clone();
        v1[0] = (v1[0] & 0x3F) | 0x40;
        assert_eq!(parse(&v1), Err(RtcpError::Version(1)));
        // A length that runs past the datagram.
        let mut long = good.clone();
        long[3] = 200;
        assert!(matches!(
            parse(&long),
            Err(RtcpError::Length { index: 0, .. })
        ));
        // Trailing bytes that are not a whole packet.
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0x80, 201]);
        assert!(matches!(parse(&trailing), Err(RtcpError::Length { .. })));
        // Padding on the first of two packets.
        let mut padded = good.clone();
        padded[0] |= 0x20;
        assert_eq!(parse(&padded), Err(RtcpError::Padding { index: 0 }));
        // A count of report blocks the length cannot hold.
        let mut counted = good;
        counted[0] = 0x80 | 5;
        assert!(matches!(parse(&counted), Err(RtcpError::Count { .. })));
        // RTP is not RTCP on a muxed port.
        assert!(!is_rtcp(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn random_datagrams_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3550);
        let good = write_report(1, Some(&SenderInfo::default()), &[block()], "c", true);
        for _ in 0..50_000 {
            let mut bytes = if rng.random_bool(0.5) {
                good.clone()
            } else {
                (0..rng.random_range(0..80)).map(|_| rng.random()).collect()
            };
            for _ in 0..rng.random_range(0..4) {
                if !bytes.is_empty() {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] = rng.random();
                }
            }
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn reception_stats_count_loss_wraps_and_jitter() {
        let mut stats = ReceptionStats::new(5, 65_530);
        // 65530..=65535, 0..=9 with 3 and 7 missing: 16 expected, 14 received.
        for seq in (65_530u16..=65_535)
            .chain(0..10)
            .filter(|s| *s != 3 && *s != 7)
        {
            stats.packet(seq, None);
        }
        assert_eq!(stats.extended_highest(), (1 << 16) + 9);
        assert_eq!(stats.expected(), 16);
        assert_eq!(stats.lost(), 2);
        let report = stats.report(1.0);
        assert_eq!(report.cumulative_lost, 2);
        assert_eq!(report.fraction_lost, (2 * 256 / 16) as u8);
        // A late packet arrives: nothing more is lost in the next interval.
        stats.packet(7, None);
        stats.packet(10, None);
        let report = stats.report(2.0);
        assert_eq!(report.cumulative_lost, 1);
        assert_eq!(report.fraction_lost, 0);

        let mut steady = ReceptionStats::new(1, 0);
        let mut wobbly = ReceptionStats::new(1, 0);
        for seq in 0..200u16 {
            let ts = u32::from(seq) * 160;
            steady.packet(seq, Some((ts, f64::from(ts) + 400.0)));
            let wobble = if seq % 2 == 0 { 0.0 } else { 320.0 };
            wobbly.packet(seq, Some((ts, f64::from(ts) + wobble)));
        }
        assert!(steady.jitter() < 1.0);
        assert!(wobbly.jitter() > 250.0, "jitter {}", wobbly.jitter());
    }

    #[test]
    fn the_round_trip_comes_from_lsr_and_dlsr() {
        let sent = ntp_of(UNIX_EPOCH + Duration::from_secs(1_000));
        let mut stats = ReceptionStats::new(9, 0);
        stats.packet(0, None);
        stats.sender_report(sent, 10.0);
        // The peer holds the report 0.5 s, and its answer arrives 0.6 s after the report left.
        let mut block = stats.report(10.5);
        assert_eq!(block.last_sender_report, ntp_middle(sent));
        assert_eq!(block.delay_since_last_sender_report, 32_768);
        let arrival = ntp_of(UNIX_EPOCH + Duration::from_millis(1_000_600));
        let rtt = round_trip(&block, arrival).unwrap();
        assert!((rtt.as_secs_f64() - 0.1).abs() < 0.001, "{rtt:?}");
        block.last_sender_report = 0;
        assert_eq!(round_trip(&block, arrival), None);
    }
}
