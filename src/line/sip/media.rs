//! The audio of one SIP call: a thread that, every 20 ms, reads the RTP packets that arrived,
//! plays the jitter buffer's next slot to the call as a 16 kHz frame (DTMF events in place of
//! audio), and sends the next 20 ms of the box's queued audio as one RTP packet (or, while the
//! box presses keys, an RFC 4733 telephone event in its place); every ~5 s it
//! sends an RTCP report and it reads the peer's. It owns the call's RTP and RTCP sockets; the
//! [`SipLine`](super::SipLine) talks to it through [`MediaHandle`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::g711;
use super::g722::{G722Decoder, G722Encoder};
use super::rate::{Downsampler, Upsampler};
use super::rtcp::{self, ReceptionStats, RtcpPacket, SenderInfo};
use super::rtp::{
    self, DtmfReceiver, DtmfSender, JitterBuffer, JitterStats, KeySlot, Playout, RtpHeader,
};
use super::sdp::{Codec, Negotiated};
use crate::line::{frame_rms, Frame, KeyStep, LineInput, FRAME_SAMPLES};

/// RTP timestamp units per 20 ms (8 kHz clock, G.722 included).
const CODEC_FRAME: usize = 160;
/// Frames the call may fall behind reading before new ones are dropped.
const INPUT_QUEUE: usize = 100;
/// Mean time between the box's RTCP reports (RFC 3550's 5 s minimum for a two-party call);
/// each interval is drawn from 0.5–1.5 times it so that the two sides do not synchronise.
const RTCP_INTERVAL: Duration = Duration::from_secs(5);

/// What the peer said about the box's stream in its last report block.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Fraction lost in the last interval, in 1/256.
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub highest_sequence: u32,
    /// Interarrival jitter the peer measured, in timestamp units (1/8 ms).
    pub jitter: u32,
}

/// RTCP of one call: the box's reports and what the peer's said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RtcpStats {
    /// Compound reports the box sent.
    pub sent: u64,
    /// Compound packets received and understood.
    pub received: u64,
    /// Datagrams dropped as malformed.
    pub malformed: u64,
    pub sender_reports: u64,
    pub receiver_reports: u64,
    /// The peer said BYE in RTCP.
    pub peer_bye: bool,
    /// Packets the peer says it sent, from its last sender report.
    pub peer_packets_sent: Option<u32>,
    /// The peer's view of the box's stream, from its last report block about it.
    pub peer_view: Option<PeerView>,
    /// Round trip from the peer's last report block (LSR/DLSR).
    pub round_trip_ms: Option<u32>,
    /// The box's own count of the peer's stream: packets expected from the sequence numbers,
    /// and lost (expected − received, as its reports say).
    pub expected: u64,
    pub lost: i64,
    /// The box's interarrival jitter of the peer's stream, in timestamp units.
    pub jitter: u32,
}

/// Counts of one call's media, for the call record and the bench.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MediaStats {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub malformed: u64,
    pub foreign_payload: u64,
    pub dtmf_keys: u64,
    /// Keys the box pressed (RFC 4733 events it started).
    pub dtmf_keys_sent: u64,
    /// Sequence number of the last RTP packet the box sent (to match the peer's reports).
    pub last_sequence_sent: u16,
    pub frames_dropped: u64,
    pub jitter: JitterStats,
    pub jitter_ms: u32,
    pub rtcp: RtcpStats,
}

/// A call's media ports: RTP on an even port and RTCP on the next one (RFC 3550 §11), which a
/// peer assumes unless told otherwise.
pub struct MediaSockets {
    pub rtp: UdpSocket,
    /// `None`: RTCP goes out of the RTP socket (when muxed, or when only an RTP socket was given).
    pub rtcp: Option<UdpSocket>,
}

impl MediaSockets {
    /// Binds an even port on `ip` and the odd one above it.
    pub fn bind(ip: IpAddr) -> std::io::Result<MediaSockets> {
        let mut last_error = None;
        for _ in 0..64 {
            let rtp = UdpSocket::bind(SocketAddr::new(ip, 0))?;
            let port = rtp.local_addr()?.port();
            if port % 2 != 0 || port == u16::MAX {
                continue;
            }
            match UdpSocket::bind(SocketAddr::new(ip, port + 1)) {
                Ok(rtcp) => {
                    return Ok(MediaSockets {
                        rtp,
                        rtcp: Some(rtcp),
                    })
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            std::io::Error::other("no free pair of RTP/RTCP ports after 64 tries")
        }))
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().map(|a| a.port()).unwrap_or_default()
    }
}

impl From<UdpSocket> for MediaSockets {
    fn from(rtp: UdpSocket) -> MediaSockets {
        MediaSockets { rtp, rtcp: None }
    }
}

/// What the line and the media thread share.
struct Shared {
    playout: Mutex<VecDeque<i16>>,
    played_level_bits: AtomicU32,
    stop: AtomicBool,
    hung_up: AtomicBool,
    session: Mutex<Negotiated>,
    stats: Mutex<MediaStats>,
    /// Keys that came by SIP INFO rather than in the RTP stream.
    signalled_keys: Mutex<VecDeque<char>>,
    /// Keys the box presses, sent in place of its audio.
    keys_out: Mutex<DtmfSender>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The line's side of the media thread.
pub struct MediaHandle {
    shared: Arc<Shared>,
    input: Receiver<LineInput>,
    thread: Option<JoinHandle<()>>,
}

impl MediaHandle {
    /// Starts the media thread on `sockets` (already bound) for the agreed session.
    pub fn start(
        sockets: impl Into<MediaSockets>,
        session: Negotiated,
    ) -> std::io::Result<MediaHandle> {
        let sockets = sockets.into();
        sockets.rtp.set_nonblocking(true)?;
        if let Some(rtcp) = &sockets.rtcp {
            rtcp.set_nonblocking(true)?;
        }
        let shared = Arc::new(Shared {
            playout: Mutex::new(VecDeque::new()),
            played_level_bits: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            hung_up: AtomicBool::new(false),
            session: Mutex::new(session),
            stats: Mutex::new(MediaStats::default()),
            signalled_keys: Mutex::new(VecDeque::new()),
            keys_out: Mutex::new(DtmfSender::default()),
        });
        let (sender, input) = mpsc::sync_channel(INPUT_QUEUE);
        let loop_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sip-media".into())
            .spawn(move || MediaLoop::new(sockets, loop_shared, sender).run())?;
        Ok(MediaHandle {
            shared,
            input,
            thread: Some(thread),
        })
    }

    /// The next input, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<LineInput, mpsc::RecvTimeoutError> {
        self.input.recv_timeout(timeout)
    }

    /// The next input if one is waiting.
    pub fn try_next(&self) -> Result<LineInput, mpsc::TryRecvError> {
        self.input.try_recv()
    }

    pub fn play(&self, samples: &[i16]) {
        lock(&self.shared.playout).extend(samples.iter().copied());
    }

    /// The box's audio queued, and the keys it still has to press, in samples.
    pub fn queued_samples(&self) -> usize {
        let keys = lock(&self.shared.keys_out).slots_left() as usize * FRAME_SAMPLES;
        lock(&self.shared.playout).len() + keys
    }

    /// Presses keys as RFC 4733 events, ahead of the queued audio (which waits meanwhile).
    pub fn send_keys(&self, steps: &[KeyStep]) {
        lock(&self.shared.keys_out).push(steps);
    }

    /// Drops the keys not yet pressed.
    pub fn drop_keys(&self) {
        lock(&self.shared.keys_out).clear();
    }

    pub fn flush(&self) {
        lock(&self.shared.playout).clear();
    }

    pub fn played_level(&self) -> f32 {
        f32::from_bits(self.shared.played_level_bits.load(Ordering::Relaxed))
    }

    /// The signalling side's handle on this call's media.
    pub fn control(&self) -> MediaControl {
        MediaControl {
            shared: self.shared.clone(),
        }
    }

    pub fn stats(&self) -> MediaStats {
        *lock(&self.shared.stats)
    }

    /// Stops the thread and releases the socket.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the media thread panicked");
            }
        }
    }
}

impl Drop for MediaHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the call's signalling changes in its media.
#[derive(Clone)]
pub struct MediaControl {
    shared: Arc<Shared>,
}

impl MediaControl {
    /// The peer ended the call: the next input the call reads is the hang-up.
    pub fn peer_hung_up(&self) {
        self.shared.hung_up.store(true, Ordering::SeqCst);
    }

    /// A re-INVITE changed the session (hold, resume, another codec or address).
    pub fn update(&self, session: Negotiated) {
        *lock(&self.shared.session) = session;
    }

    pub fn session(&self) -> Negotiated {
        *lock(&self.shared.session)
    }

    /// A key pressed, signalled by SIP INFO.
    pub fn press(&self, key: char) {
        lock(&self.shared.signalled_keys).push_back(key);
        lock(&self.shared.stats).dtmf_keys += 1;
    }
}

/// Symmetric RTP: the address a peer's SDP gave, and where its packets really come from.
#[derive(Clone, Copy)]
struct Latch {
    sdp: SocketAddr,
    from: SocketAddr,
}

struct MediaLoop {
    socket: UdpSocket,
    rtcp_socket: Option<UdpSocket>,
    shared: Arc<Shared>,
    sender: SyncSender<LineInput>,
    jitter: JitterBuffer,
    dtmf: DtmfReceiver,
    pending_keys: VecDeque<char>,
    upsampler: Upsampler,
    downsampler: Downsampler,
    g722_encoder: G722Encoder,
    g722_decoder: G722Decoder,
    /// The codec the coders' state belongs to; a change of codec starts them afresh.
    codec: Codec,
    /// The last frame heard, faded for a lost packet.
    last_frame: Vec<i16>,
    concealed: u32,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Where the peer's packets come from, once they came (symmetric RTP behind NAT).
    latch: Option<Latch>,
    started: Instant,
    hang_up_sent: bool,
    /// The peer's stream as the box's reports describe it.
    reception: Option<ReceptionStats>,
    /// Where the peer's RTCP comes from, once it has come (sent back there, as RTP is).
    rtcp_peer: Option<SocketAddr>,
    next_report: Instant,
    packets_sent: u32,
    octets_sent: u32,
    /// Whether audio went out since the last report (a sender report then, else a receiver's).
    sent_since_report: bool,
    cname: String,
}

/// A duration drawn from 0.5–1.5 times `mean`.
fn randomized(mean: Duration) -> Duration {
    mean.mul_f64(rand::random_range(0.5..1.5))
}

impl MediaLoop {
    fn new(sockets: MediaSockets, shared: Arc<Shared>, sender: SyncSender<LineInput>) -> MediaLoop {
        let codec = lock(&shared.session).codec;
        let ssrc: u32 = rand::random();
        let cname = match sockets.rtp.local_addr() {
            Ok(address) => format!("callbox-{ssrc:08x}@{}", address.ip()),
            Err(_) => format!("callbox-{ssrc:08x}"),
        };
        MediaLoop {
            socket: sockets.rtp,
            rtcp_socket: sockets.rtcp,
            shared,
            sender,
            jitter: JitterBuffer::new(2, 10),
            dtmf: DtmfReceiver::default(),
            pending_keys: VecDeque::new(),
            upsampler: Upsampler::default(),
            downsampler: Downsampler::default(),
            g722_encoder: G722Encoder::new(),
            g722_decoder: G722Decoder::new(),
            codec,
            last_frame: vec![0; FRAME_SAMPLES],
            concealed: 0,
            ssrc,
            sequence: rand::random(),
            timestamp: rand::random(),
            latch: None,
            started: Instant::now(),
            hang_up_sent: false,
            reception: None,
            rtcp_peer: None,
            // The first report goes out soon, so a short call has one too.
            next_report: Instant::now() + randomized(RTCP_INTERVAL / 2),
            packets_sent: 0,
            octets_sent: 0,
            sent_since_report: false,
            cname,
        }
    }

    fn run(mut self) {
        let tick = Duration::from_millis(20);
        let mut next_tick = Instant::now();
        while !self.shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if next_tick > now {
                std::thread::sleep(next_tick - now);
            } else if now - next_tick > tick * 5 {
                // The thread was held up (an overloaded machine): start the clock again rather
                // than bursting the missed packets out.
                next_tick = now;
            }
            next_tick += tick;
            let mut session = *lock(&self.shared.session);
            self.follow_latch(&mut session);
            if session.codec != self.codec {
                self.codec = session.codec;
                self.g722_encoder = G722Encoder::new();
                self.g722_decoder = G722Decoder::new();
                self.upsampler = Upsampler::default();
                self.downsampler = Downsampler::default();
            }
            self.receive(&session);
            self.receive_rtcp();
            self.publish_reception();
            self.pending_keys
                .extend(lock(&self.shared.signalled_keys).drain(..));
            if self.deliver_input(&session).is_err() {
                break; // the call is gone
            }
            self.send(&session);
            if Instant::now() >= self.next_report {
                self.next_report = Instant::now() + randomized(RTCP_INTERVAL);
                self.report(&session, false);
            }
        }
        // RFC 3550 §6.3.7: a source leaving the session says BYE.
        let session = *lock(&self.shared.session);
        self.report(&session, true);
    }

    /// Local time in seconds since the call's media started.
    fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn receive(&mut self, session: &Negotiated) {
        let mut buffer = [0u8; 2048];
        loop {
            let (size, from) = match self.socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "RTP receive failed");
                    return;
                }
            };
            // RTCP on the RTP port: multiplexed, or a peer that muxes regardless (RFC 5761 keeps
            // RTP payload types 64–95 free so that the two never collide).
            if rtcp::is_rtcp(&buffer[..size]) {
                self.handle_rtcp(&buffer[..size], from);
                continue;
            }
            let mut stats = lock(&self.shared.stats);
            let Ok((header, payload)) = rtp::parse(&buffer[..size]) else {
                stats.malformed += 1;
                continue;
            };
            stats.packets_received += 1;
            let audio = header.payload_type == session.payload_type;
            let arrival_s = self.now_s();
            let reception = match &mut self.reception {
                Some(r) if r.ssrc() == header.ssrc => r,
                _ => self
                    .reception
                    .insert(ReceptionStats::new(header.ssrc, header.sequence)),
            };
            let clock = f64::from(session.codec.clock_rate());
            reception.packet(
                header.sequence,
                audio.then_some((header.timestamp, arrival_s * clock)),
            );
            if Some(header.payload_type) == session.dtmf_payload_type {
                if let Some(key) = self.dtmf.receive(&header, payload) {
                    stats.dtmf_keys += 1;
                    self.pending_keys.push_back(key);
                }
                // Events may come between audio packets (baresip keeps sending audio while a
                // key is held): their sequence numbers are no lost audio.
                self.jitter.skip(header.sequence);
            } else if audio {
                drop(stats);
                self.latch(from, session);
                self.jitter.push(
                    header.sequence,
                    header.timestamp,
                    session.codec.clock_rate(),
                    arrival_s * 1000.0,
                    payload.to_vec(),
                );
            } else {
                stats.foreign_payload += 1;
                self.jitter.skip(header.sequence);
            }
        }
    }

    /// Reads the RTCP port (when RTCP has one of its own).
    fn receive_rtcp(&mut self) {
        let mut buffer = [0u8; 2048];
        loop {
            let Some(socket) = &self.rtcp_socket else {
                return;
            };
            match socket.recv_from(&mut buffer) {
                Ok((size, from)) => self.handle_rtcp(&buffer[..size], from),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "RTCP receive failed");
                    return;
                }
            }
        }
    }

    fn handle_rtcp(&mut self, datagram: &[u8], from: SocketAddr) {
        let packets = match rtcp::parse(datagram) {
            Ok(packets) => packets,
            Err(e) => {
                tracing::debug!(error = %e, "malformed RTCP dropped");
                lock(&self.shared.stats).rtcp.malformed += 1;
                return;
            }
        };
        self.rtcp_peer = Some(from);
        let arrival_ntp = rtcp::ntp_now();
        let now_s = self.now_s();
        let mut stats = lock(&self.shared.stats);
        stats.rtcp.received += 1;
        for packet in packets {
            let reports = match packet {
                RtcpPacket::SenderReport {
                    ssrc,
                    info,
                    reports,
                } => {
                    stats.rtcp.sender_reports += 1;
                    stats.rtcp.peer_packets_sent = Some(info.packet_count);
                    if let Some(reception) = self.reception.as_mut().filter(|r| r.ssrc() == ssrc) {
                        reception.sender_report(info.ntp, now_s);
                    }
                    reports
                }
                RtcpPacket::ReceiverReport { reports, .. } => {
                    stats.rtcp.receiver_reports += 1;
                    reports
                }
                RtcpPacket::Goodbye { .. } => {
                    stats.rtcp.peer_bye = true;
                    continue;
                }
                RtcpPacket::Other { .. } => continue,
            };
            for block in reports.iter().filter(|b| b.ssrc == self.ssrc) {
                stats.rtcp.peer_view = Some(PeerView {
                    fraction_lost: block.fraction_lost,
                    cumulative_lost: block.cumulative_lost,
                    highest_sequence: block.highest_sequence,
                    jitter: block.jitter,
                });
                if let Some(rtt) = rtcp::round_trip(block, arrival_ntp) {
                    stats.rtcp.round_trip_ms = Some(rtt.as_millis() as u32);
                }
            }
        }
    }

    /// Sends a compound report: where the peer's RTCP comes from, else where its SDP says.
    fn report(&mut self, session: &Negotiated, goodbye: bool) {
        let now_s = self.now_s();
        let block = self.reception.as_mut().map(|r| r.report(now_s));
        let info = self.sent_since_report.then(|| SenderInfo {
            ntp: rtcp::ntp_now(),
            rtp_timestamp: self.timestamp,
            packet_count: self.packets_sent,
            octet_count: self.octets_sent,
        });
        self.sent_since_report = false;
        let packet = rtcp::write_report(
            self.ssrc,
            info.as_ref(),
            block.as_slice(),
            &self.cname,
            goodbye,
        );
        let destination = match self.rtcp_peer {
            Some(peer) => peer,
            None if session.rtcp_mux => session.remote,
            // RTP was latched to another address than the SDP's: RTCP follows it.
            None if self.latch.is_some() && session.remote.ip() != session.remote_rtcp.ip() => {
                SocketAddr::new(session.remote.ip(), session.remote.port().saturating_add(1))
            }
            None => session.remote_rtcp,
        };
        let socket = match &self.rtcp_socket {
            Some(socket) if !session.rtcp_mux => socket,
            _ => &self.socket,
        };
        let sent = socket.send_to(&packet, destination);
        match sent {
            Ok(_) => lock(&self.shared.stats).rtcp.sent += 1,
            Err(e) => tracing::debug!(error = %e, "RTCP send failed"),
        }
    }

    /// The box's own count of the peer's stream, into the call's stats.
    fn publish_reception(&self) {
        if let Some(reception) = &self.reception {
            let mut stats = lock(&self.shared.stats);
            stats.rtcp.expected = reception.expected();
            stats.rtcp.lost = reception.lost();
            stats.rtcp.jitter = reception.jitter() as u32;
        }
    }

    /// Keeps sending where the peer's packets come from when a re-INVITE (hold, resume, a new
    /// codec) gives its SDP address again; latches anew when it gives another address.
    fn follow_latch(&mut self, session: &mut Negotiated) {
        let Some(latch) = self.latch else {
            return;
        };
        if session.remote == latch.from {
            return;
        }
        if session.remote == latch.sdp {
            session.remote = latch.from;
            lock(&self.shared.session).remote = latch.from;
        } else {
            self.latch = None;
        }
    }

    /// Symmetric RTP: send to where the peer's audio comes from, which differs from its SDP
    /// address when it is behind NAT.
    fn latch(&mut self, from: SocketAddr, session: &Negotiated) {
        if self.latch.is_none() {
            self.latch = Some(Latch {
                sdp: session.remote,
                from,
            });
            if from != session.remote {
                tracing::info!("RTP peer answers from another address than its SDP; sending there");
                lock(&self.shared.session).remote = from;
            }
        }
    }

    /// One packet's audio as the box's 16 kHz frame.
    fn decode(&mut self, codec: Codec, payload: &[u8]) -> Vec<i16> {
        let mut at_8k = match codec {
            Codec::G722 => {
                let mut frame = self.g722_decoder.decode(payload);
                frame.resize(FRAME_SAMPLES, 0);
                return frame;
            }
            Codec::Pcmu => payload.iter().map(|&b| g711::mulaw_decode(b)).collect(),
            Codec::Pcma => payload
                .iter()
                .map(|&b| g711::alaw_decode(b))
                .collect::<Vec<_>>(),
        };
        at_8k.resize(CODEC_FRAME, 0);
        self.upsampler.process(&at_8k)
    }

    /// One 16 kHz frame as a packet's payload.
    fn encode(&mut self, codec: Codec, frame: &[i16]) -> Vec<u8> {
        match codec {
            Codec::G722 => self.g722_encoder.encode(frame),
            Codec::Pcmu => self
                .downsampler
                .process(frame)
                .iter()
                .map(|&s| g711::mulaw_encode(s))
                .collect(),
            Codec::Pcma => self
                .downsampler
                .process(frame)
                .iter()
                .map(|&s| g711::alaw_encode(s))
                .collect(),
        }
    }

    fn deliver_input(&mut self, session: &Negotiated) -> Result<(), ()> {
        if self.shared.hung_up.load(Ordering::SeqCst) {
            if !self.hang_up_sent {
                // Never blocks: a call that stopped reading its line must still be able to
                // stop this thread; a full queue is tried again at the next tick.
                match self.sender.try_send(LineInput::HungUp) {
                    Ok(()) => self.hang_up_sent = true,
                    Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Disconnected(_)) => return Err(()),
                }
            }
            return Ok(());
        }
        let heard = match self.jitter.pop() {
            Playout::Packet(payload) => {
                self.concealed = 0;
                self.last_frame = self.decode(session.codec, &payload);
                self.last_frame.clone()
            }
            Playout::Lost => {
                // Repeat the last frame, fading, for up to three lost packets; then silence.
                self.concealed += 1;
                let gain = if self.concealed <= 3 {
                    0.5f32.powi(self.concealed as i32)
                } else {
                    0.0
                };
                self.last_frame
                    .iter()
                    .map(|&s| (f32::from(s) * gain) as i16)
                    .collect()
            }
            Playout::Empty => vec![0; FRAME_SAMPLES],
        };
        let input = match self.pending_keys.pop_front() {
            Some(key) => LineInput::Dtmf(key),
            None => {
                let mut frame: Frame = [0; FRAME_SAMPLES];
                let n = heard.len().min(FRAME_SAMPLES);
                frame[..n].copy_from_slice(&heard[..n]);
                LineInput::Audio(Box::new(frame))
            }
        };
        match self.sender.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                lock(&self.shared.stats).frames_dropped += 1;
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        }
    }

    fn send(&mut self, session: &Negotiated) {
        self.timestamp = self.timestamp.wrapping_add(CODEC_FRAME as u32);
        let slot = self.key_slot(session);
        let mut frame = vec![0i16; FRAME_SAMPLES];
        if slot == KeySlot::Audio {
            let mut playout = lock(&self.shared.playout);
            let n = playout.len().min(FRAME_SAMPLES);
            for (place, sample) in frame.iter_mut().zip(playout.drain(..n)) {
                *place = sample;
            }
        }
        self.shared
            .played_level_bits
            .store(frame_rms(&frame).to_bits(), Ordering::Relaxed);
        // Encoded even when not sent, so the coder's state follows the audio.
        let mut payload = self.encode(session.codec, &frame);
        if !session.direction.sends() {
            return;
        }
        let mut header = RtpHeader {
            payload_type: session.payload_type,
            marker: false,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        if let (
            KeySlot::Event {
                marker,
                timestamp,
                payload: event,
            },
            Some(payload_type),
        ) = (slot, session.dtmf_payload_type)
        {
            header = RtpHeader {
                payload_type,
                marker,
                timestamp,
                ..header
            };
            payload = event.to_vec();
            if marker {
                lock(&self.shared.stats).dtmf_keys_sent += 1;
            }
        }
        self.sequence = self.sequence.wrapping_add(1);
        let packet = rtp::write(&header, &payload);
        match self.socket.send_to(&packet, session.remote) {
            Ok(_) => {
                let mut stats = lock(&self.shared.stats);
                stats.packets_sent += 1;
                stats.last_sequence_sent = header.sequence;
                drop(stats);
                self.packets_sent = self.packets_sent.wrapping_add(1);
                self.octets_sent = self.octets_sent.wrapping_add(payload.len() as u32);
                self.sent_since_report = true;
            }
            Err(e) => tracing::debug!(error = %e, "RTP send failed"),
        }
        let mut stats = lock(&self.shared.stats);
        stats.jitter = self.jitter.stats();
        stats.jitter_ms = self.jitter.jitter_ms().round() as u32;
    }

    /// What this slot carries: a key the box presses, the quiet between keys, or audio. Keys
    /// wait while the call is on hold, and are dropped if the far end takes no telephone
    /// events (any more).
    fn key_slot(&self, session: &Negotiated) -> KeySlot {
        let mut keys = lock(&self.shared.keys_out);
        if session.dtmf_payload_type.is_none() {
            keys.clear();
            return KeySlot::Audio;
        }
        if !session.direction.sends() {
            return KeySlot::Audio;
        }
        keys.next_slot(self.timestamp)
    }
}
