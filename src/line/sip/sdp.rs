//! SDP (RFC 4566) for audio calls, offer/answer style (RFC 3264): parses what a peer offers or
//! answers, picks the codec and the telephone-event payload, and writes the box's own offer or
//! answer. Only what an audio call needs is modelled; unknown lines are skipped, malformed ones
//! are errors that name the line.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP line {line}: {problem}")]
    Malformed { line: usize, problem: String },
    #[error("SDP has no audio stream")]
    NoAudio,
    #[error("SDP has no connection address for the audio stream")]
    NoConnection,
    #[error("no common audio codec (the peer offers {offered}; the box speaks G722, PCMU, PCMA)")]
    NoCommonCodec { offered: String },
    #[error("SDP is too large ({0} bytes)")]
    TooLarge(usize),
}

/// Largest SDP body accepted: a real audio offer is well under 2 KiB.
pub const MAX_SDP_BYTES: usize = 16 * 1024;

/// Which way media flows, from the point of view of the side that wrote the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer gives to an offer with this direction.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether the side with this direction sends audio.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side with this direction receives audio.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// One `a=rtpmap` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
}

/// The audio `m=` section of a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioMedia {
    pub port: u16,
    pub protocol: String,
    pub formats: Vec<u8>,
    pub rtpmaps: Vec<RtpMap>,
    pub direction: Direction,
    pub ptime: Option<u32>,
    pub connection: Option<IpAddr>,
    /// `a=rtcp-mux` (RFC 5761): RTCP on the RTP port.
    pub rtcp_mux: bool,
    /// `a=rtcp:` (RFC 3605): where RTCP goes when not RTP's port + 1.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
}

/// What the box needs from a session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub connection: Option<IpAddr>,
    pub audio: Option<AudioMedia>,
    /// Session-level direction attribute, the default for the media.
    pub direction: Option<Direction>,
}

/// The audio codecs the box speaks, in its order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Wideband (16 kHz audio) sub-band ADPCM, 64 kbit/s.
    G722,
    Pcmu,
    Pcma,
}

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::G722, Codec::Pcmu, Codec::Pcma];

    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::G722 => 9,
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub fn encoding(self) -> &'static str {
        match self {
            Codec::G722 => "G722",
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The RTP clock rate, as SDP writes it: 8000 for G.722 too, though it samples at 16 kHz
    /// (RFC 3551 §4.5.2 keeps the value of the first, erroneous, definition).
    pub fn clock_rate(self) -> u32 {
        8_000
    }

    /// The rate of the audio the codec carries.
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::G722 => 16_000,
            Codec::Pcmu | Codec::Pcma => 8_000,
        }
    }
}

/// What both sides agreed on for the call's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, when both sides have it.
    pub dtmf_payload_type: Option<u8>,
    /// Where the peer wants its audio.
    pub remote: SocketAddr,
    /// Where the peer wants its RTCP: RTP's port + 1, or what `a=rtcp:` says, or RTP's own
    /// address when muxed.
    pub remote_rtcp: SocketAddr,
    /// Whether RTCP shares the RTP port (both sides said `a=rtcp-mux`).
    pub rtcp_mux: bool,
    /// The box's own direction.
    pub direction: Direction,
    pub ptime_ms: u32,
}

fn malformed(line: usize, problem: impl Into<String>) -> SdpError {
    SdpError::Malformed {
        line,
        problem: problem.into(),
    }
}

fn parse_connection(line: usize, value: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1 (a multicast TTL suffix "/127" is dropped)
    let mut parts = value.split_whitespace();
    let (Some("IN"), Some(kind), Some(address)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed(
            line,
            "connection line is not `IN IP4|IP6 address`",
        ));
    };
    if kind != "IP4" && kind != "IP6" {
        return Err(malformed(line, format!("unknown address type {kind:?}")));
    }
    let address = address.split('/').next().unwrap_or(address);
    address
        .parse()
        .map_err(|_| malformed(line, format!("{address:?} is not an IP address")))
}

fn parse_direction(attribute: &str) -> Option<Direction> {
    match attribute {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

/// Parses a session description; the first audio stream is the call's.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge(text.len()));
    }
    let mut description = SessionDescription {
        connection: None,
        audio: None,
        direction: None,
    };
    // Media sections after the first audio one, or non-audio ones, are skipped.
    enum Section {
        Session,
        Audio,
        Other,
    }
    let mut section = Section::Session;
    let mut seen_version = false;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(malformed(number, "not a `type=value` line"));
        };
        if kind.len() != 1 {
            return Err(malformed(
                number,
                format!("{kind:?} is not a one-letter type"),
            ));
        }
        match (kind, &section) {
            ("v", _) => {
                if value != "0" {
                    return Err(malformed(number, format!("unsupported version {value:?}")));
                }
                seen_version = true;
            }
            ("m", _) => {
                let mut parts = value.split_whitespace();
                let media = parts.next().unwrap_or_default();
                let port = parts.next().unwrap_or_default();
                let protocol = parts.next().unwrap_or_default();
                if media != "audio" || description.audio.is_some() {
                    section = Section::Other;
                    continue;
                }
                let port: u16 = port
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| malformed(number, format!("{port:?} is not a port")))?;
                let formats = parts
                    .map(|f| {
                        f.parse::<u8>().ok().filter(|pt| *pt < 128).ok_or_else(|| {
                            malformed(number, format!("{f:?} is not a payload type"))
                        })
                    })
                    .collect::<Result<Vec<u8>, SdpError>>()?;
                if formats.is_empty() {
                    return Err(malformed(number, "audio stream lists no formats"));
                }
                description.audio = Some(AudioMedia {
                    port,
                    protocol: protocol.to_string(),
                    formats,
                    rtpmaps: Vec::new(),
                    direction: description.direction.unwrap_or(Direction::SendRecv),
                    ptime: None,
                    connection: None,
                    rtcp_mux: false,
                    rtcp: None,
                });
                section = Section::Audio;
            }
            ("c", Section::Session) => {
                description.connection = Some(parse_connection(number, value)?)
            }
            ("c", Section::Audio) => {
                let address = parse_connection(number, value)?;
                if let Some(audio) = description.audio.as_mut() {
                    audio.connection = Some(address);
                }
            }
            ("a", Section::Session) => {
                if let Some(direction) = parse_direction(value) {
                    description.direction = Some(direction);
                }
            }
            ("a", Section::Audio) => {
                let Some(audio) = description.audio.as_mut() else {
                    continue;
                };
                if let Some(direction) = parse_direction(value) {
                    audio.direction = direction;
                } else if let Some(map) = value.strip_prefix("rtpmap:") {
                    audio.rtpmaps.push(parse_rtpmap(number, map)?);
                } else if value == "rtcp-mux" {
                    audio.rtcp_mux = true;
                } else if let Some(rtcp) = value.strip_prefix("rtcp:") {
                    audio.rtcp = Some(parse_rtcp(number, rtcp)?);
                } else if let Some(ptime) = value.strip_prefix("ptime:") {
                    audio.ptime = Some(
                        ptime
                            .trim()
                            .parse()
                            .map_err(|_| malformed(number, format!("{ptime:?} is not a ptime")))?,
                    );
                }
            }
            _ => {}
        }
    }
    if !seen_version {
        return Err(malformed(1, "missing `v=0`"));
    }
    Ok(description)
}

fn parse_rtcp(line: usize, value: &str) -> Result<(u16, Option<IpAddr>), SdpError> {
    // rtcp:<port> [IN IP4 <address>]
    let value = value.trim();
    let (port, address) = match value.split_once(' ') {
        Some((port, connection)) => (port, Some(parse_connection(line, connection)?)),
        None => (value, None),
    };
    let port = port
        .parse()
        .map_err(|_| malformed(line, format!("{port:?} is not an RTCP port")))?;
    Ok((port, address))
}

fn parse_rtpmap(line: usize, value: &str) -> Result<RtpMap, SdpError> {
    // rtpmap:<pt> <encoding>/<clock>[/<channels>]
    let (pt, rest) = value
        .split_once(' ')
        .ok_or_else(|| malformed(line, "rtpmap without an encoding"))?;
    let payload_type = pt
        .parse::<u8>()
        .ok()
        .filter(|pt| *pt < 128)
        .ok_or_else(|| malformed(line, format!("{pt:?} is not a payload type")))?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().unwrap_or_default().to_string();
    let clock_rate = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| malformed(line, format!("rtpmap {rest:?} has no clock rate")))?;
    Ok(RtpMap {
        payload_type,
        encoding,
        clock_rate,
    })
}

impl AudioMedia {
    /// The encoding and clock rate of a payload type (static types need no rtpmap).
    fn encoding_of(&self, payload_type: u8) -> Option<(String, u32)> {
        if let Some(map) = self.rtpmaps.iter().find(|m| m.payload_type == payload_type) {
            return Some((map.encoding.to_ascii_uppercase(), map.clock_rate));
        }
        match payload_type {
            0 => Some(("PCMU".into(), 8_000)),
            8 => Some(("PCMA".into(), 8_000)),
            9 => Some(("G722".into(), 8_000)),
            _ => None,
        }
    }

    fn find(&self, encoding: &str, clock_rate: u32) -> Option<u8> {
        self.formats.iter().copied().find(|&pt| {
            self.encoding_of(pt)
                .is_some_and(|(e, c)| e.eq_ignore_ascii_case(encoding) && c == clock_rate)
        })
    }

    fn offered(&self) -> String {
        self.formats
            .iter()
            .map(|&pt| {
                self.encoding_of(pt)
                    .map_or(format!("payload {pt}"), |(e, c)| format!("{e}/{c}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl SessionDescription {
    /// Picks the codec and telephone events from the peer's audio stream: the first of the
    /// box's `codecs` (its order of preference: wideband first) that the peer lists.
    pub fn negotiate(&self, codecs: &[Codec]) -> Result<Negotiated, SdpError> {
        let audio = self.audio.as_ref().ok_or(SdpError::NoAudio)?;
        let address = audio
            .connection
            .or(self.connection)
            .ok_or(SdpError::NoConnection)?;
        let (codec, payload_type) = codecs
            .iter()
            .find_map(|&codec| {
                audio
                    .find(codec.encoding(), codec.clock_rate())
                    .map(|pt| (codec, pt))
            })
            .ok_or_else(|| SdpError::NoCommonCodec {
                offered: audio.offered(),
            })?;
        let remote = SocketAddr::new(address, audio.port);
        let remote_rtcp = match audio.rtcp {
            _ if audio.rtcp_mux => remote,
            Some((port, rtcp_address)) => SocketAddr::new(rtcp_address.unwrap_or(address), port),
            None => SocketAddr::new(address, audio.port.saturating_add(1)),
        };
        Ok(Negotiated {
            codec,
            payload_type,
            dtmf_payload_type: audio.find("telephone-event", 8_000),
            remote,
            remote_rtcp,
            rtcp_mux: audio.rtcp_mux,
            direction: audio.direction.answer(),
            ptime_ms: 20,
        })
    }
}

/// Writes the box's description: an offer lists every codec it speaks, an answer the agreed one.
pub fn write(
    session_id: u64,
    version: u64,
    address: IpAddr,
    port: u16,
    codecs: &[(Codec, u8)],
    dtmf_payload_type: Option<u8>,
    direction: Direction,
) -> String {
    let ip = if address.is_ipv4() { "IP4" } else { "IP6" };
    let mut formats: Vec<String> = codecs.iter().map(|(_, pt)| pt.to_string()).collect();
    formats.extend(dtmf_payload_type.map(|pt| pt.to_string()));
    let mut sdp = format!(
        "v=0\r\no=callbox {session_id} {version} IN {ip} {address}\r\ns=callbox\r\n\
         c=IN {ip} {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP {}\r\n",
        formats.join(" ")
    );
    for (codec, pt) in codecs {
        sdp.push_str(&format!(
            "a=rtpmap:{pt} {}/{}\r\n",
            codec.encoding(),
            codec.clock_rate()
        ));
    }
    if let Some(pt) = dtmf_payload_type {
        sdp.push_str(&format!(
            "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-16\r\n"
        ));
    }
    sdp.push_str(&format!("a=ptime:20\r\na={}\r\n", direction.attribute()));
    sdp
}

/// The box's answer to an offer it agreed to as `agreed`: the agreed codec and telephone
/// events, and `a=rtcp-mux` when the offer asked for it.
pub fn write_answer(
    session_id: u64,
    version: u64,
    address: IpAddr,
    port: u16,
    agreed: &Negotiated,
) -> String {
    let mut answer = write(
        session_id,
        version,
        address,
        port,
        &[(agreed.codec, agreed.payload_type)],
        agreed.dtmf_payload_type,
        agreed.direction,
    );
    if agreed.rtcp_mux {
        answer.push_str("a=rtcp-mux\r\n");
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARESIP_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
        t=0 0\r\nm=audio 10000 RTP/AVP 9 0 8 101\r\nb=AS:64\r\na=rtpmap:9 G722/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\na=sendrecv\r\na=ptime:20\r\n";

    #[test]
    fn prefers_wideband_then_takes_the_telephone_events() {
        let offer = parse(BARESIP_OFFER).unwrap();
        let agreed = offer.negotiate(&Codec::ALL).unwrap();
        assert_eq!((agreed.codec, agreed.payload_type), (Codec::G722, 9));
        assert_eq!(agreed.dtmf_payload_type, Some(101));
        assert_eq!(agreed.remote, "127.0.0.1:10000".parse().unwrap());
        assert_eq!(agreed.remote_rtcp, "127.0.0.1:10001".parse().unwrap());
        assert!(!agreed.rtcp_mux);
        assert_eq!(agreed.direction, Direction::SendRecv);
        // G.722 listed last by the peer is still the box's pick; without it, the peer's G.711.
        let last = BARESIP_OFFER.replace("RTP/AVP 9 0 8 101", "RTP/AVP 8 0 9 101");
        let agreed = parse(&last).unwrap().negotiate(&Codec::ALL).unwrap();
        assert_eq!(agreed.codec, Codec::G722);
        let narrow = parse(&last)
            .unwrap()
            .negotiate(&[Codec::Pcmu, Codec::Pcma])
            .unwrap();
        assert_eq!((narrow.codec, narrow.payload_type), (Codec::Pcmu, 0));
    }

    #[test]
    fn rtcp_mux_and_the_rtcp_attribute_say_where_reports_go() {
        let muxed = BARESIP_OFFER.replace("a=sendrecv", "a=sendrecv\r\na=rtcp-mux");
        let agreed = parse(&muxed).unwrap().negotiate(&Codec::ALL).unwrap();
        assert!(agreed.rtcp_mux);
        assert_eq!(agreed.remote_rtcp, agreed.remote);
        let answer = write_answer(1, 1, "127.0.0.1".parse().unwrap(), 4000, &agreed);
        assert!(answer.contains("a=rtcp-mux\r\n"));
        assert!(answer.contains("a=rtpmap:9 G722/8000\r\n"));
        let elsewhere =
            BARESIP_OFFER.replace("a=sendrecv", "a=sendrecv\r\na=rtcp:53020 IN IP4 10.1.2.3");
        let agreed = parse(&elsewhere).unwrap().negotiate(&Codec::ALL).unwrap();
        assert_eq!(agreed.remote_rtcp, "10.1.2.3:53020".parse().unwrap());
        let plain = write_answer(1, 1, "127.0.0.1".parse().unwrap(), 4000, &agreed);
        assert!(!plain.contains("rtcp-mux"));
        assert!(matches!(
            parse(&BARESIP_OFFER.replace("a=sendrecv", "a=rtcp:port")),
            Err(SdpError::Malformed { .. })
        ));
    }

    #[test]
    fn hold_offers_are_answered_with_the_opposite_direction() {
        let held = BARESIP_OFFER.replace("a=sendrecv", "a=sendonly");
        let agreed = parse(&held).unwrap().negotiate(&Codec::ALL).unwrap();
        assert_eq!(agreed.direction, Direction::RecvOnly);
        assert!(!agreed.direction.sends());
    }

    #[test]
    fn a_dynamic_payload_type_is_matched_by_its_rtpmap() {
        let offer =
            "v=0\r\nc=IN IP4 10.0.0.2\r\nm=audio 4000 RTP/AVP 96\r\na=rtpmap:96 pcma/8000\r\n";
        let agreed = parse(offer).unwrap().negotiate(&Codec::ALL).unwrap();
        assert_eq!((agreed.codec, agreed.payload_type), (Codec::Pcma, 96));
        assert_eq!(agreed.dtmf_payload_type, None);
    }

    #[test]
    fn nothing_in_common_names_what_was_offered() {
        let offer = "v=0\r\nc=IN IP4 10.0.0.2\r\nm=audio 4000 RTP/AVP 18 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let error = parse(offer).unwrap().negotiate(&Codec::ALL).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no common audio codec (the peer offers payload 18, OPUS/48000; the box speaks G722, PCMU, PCMA)"
        );
    }

    #[test]
    fn malformed_lines_are_named() {
        assert_eq!(
            parse("v=0\r\nm=audio port RTP/AVP 0\r\n").unwrap_err(),
            malformed(2, "\"port\" is not a port")
        );
        assert!(matches!(
            parse("v=0\r\nc=IN IP4 not-an-ip\r\n"),
            Err(SdpError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            parse("hello\r\n"),
            Err(SdpError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse("c=IN IP4 1.2.3.4\r\n"),
            Err(SdpError::Malformed { .. })
        ));
        assert_eq!(
            parse(&"a".repeat(MAX_SDP_BYTES + 1)),
            Err(SdpError::TooLarge(MAX_SDP_BYTES + 1))
        );
        assert_eq!(
            parse("v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5000 RTP/AVP 96\r\n")
                .unwrap()
                .negotiate(&Codec::ALL),
            Err(SdpError::NoAudio)
        );
    }

    #[test]
    fn the_box_reads_its_own_answer_back() {
        let sdp = write(
            7,
            1,
            "192.0.2.10".parse().unwrap(),
            20_000,
            &[(Codec::Pcma, 8)],
            Some(101),
            Direction::SendRecv,
        );
        let agreed = parse(&sdp).unwrap().negotiate(&Codec::ALL).unwrap();
        assert_eq!(agreed.codec, Codec::Pcma);
        assert_eq!(agreed.dtmf_payload_type, Some(101));
        assert_eq!(agreed.remote, "192.0.2.10:20000".parse().unwrap());
    }

    #[test]
    fn mangled_offers_are_errors_or_descriptions_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4566);
        for _ in 0..20_000 {
            let mut bytes = BARESIP_OFFER.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            if let Ok(description) = parse(&String::from_utf8_lossy(&bytes)) {
                let _ = description.negotiate(&Codec::ALL);
            }
        }
    }
}
