//! The audio of one SIP call: a thread that, every 20 ms, reads the RTP packets that arrived,
//! plays the jitter buffer's next slot to the call as a 16 kHz frame (DTMF events in place of
//! audio), and sends the next 20 ms of the box's queued audio as one RTP packet. It owns the
//! call's RTP socket; the [`SipLine`](super::SipLine) talks to it through [`MediaHandle`].

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::g711;
use super::rate::{Downsampler, Upsampler};
use super::rtp::{self, DtmfReceiver, JitterBuffer, JitterStats, Playout, RtpHeader};
use super::sdp::{Codec, Negotiated};
use crate::line::{frame_rms, Frame, LineInput, FRAME_SAMPLES};

/// Samples per 20 ms at the codec's 8 kHz.
const CODEC_FRAME: usize = 160;
/// Frames the call may fall behind reading before new ones are dropped.
const INPUT_QUEUE: usize = 100;

/// Counts of one call's media, for the call record and the bench.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MediaStats {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub malformed: u64,
    pub foreign_payload: u64,
    pub dtmf_keys: u64,
    pub frames_dropped: u64,
    pub jitter: JitterStats,
    pub jitter_ms: u32,
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
    /// Starts the media thread on `socket` (already bound) for the agreed session.
    pub fn start(socket: UdpSocket, session: Negotiated) -> std::io::Result<MediaHandle> {
        socket.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            playout: Mutex::new(VecDeque::new()),
            played_level_bits: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            hung_up: AtomicBool::new(false),
            session: Mutex::new(session),
            stats: Mutex::new(MediaStats::default()),
            signalled_keys: Mutex::new(VecDeque::new()),
        });
        let (sender, input) = mpsc::sync_channel(INPUT_QUEUE);
        let loop_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sip-media".into())
            .spawn(move || MediaLoop::new(socket, loop_shared, sender).run())?;
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

    pub fn play(&self, samples: &[i16]) {
        lock(&self.shared.playout).extend(samples.iter().copied());
    }

    pub fn queued_samples(&self) -> usize {
        lock(&self.shared.playout).len()
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

struct MediaLoop {
    socket: UdpSocket,
    shared: Arc<Shared>,
    sender: SyncSender<LineInput>,
    jitter: JitterBuffer,
    dtmf: DtmfReceiver,
    pending_keys: VecDeque<char>,
    upsampler: Upsampler,
    downsampler: Downsampler,
    /// The last frame heard, faded for a lost packet.
    last_frame: Vec<i16>,
    concealed: u32,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Whether the peer's address was taken from its packets (symmetric RTP behind NAT).
    latched: bool,
    started: Instant,
    hang_up_sent: bool,
}

impl MediaLoop {
    fn new(socket: UdpSocket, shared: Arc<Shared>, sender: SyncSender<LineInput>) -> MediaLoop {
        MediaLoop {
            socket,
            shared,
            sender,
            jitter: JitterBuffer::new(2, 10),
            dtmf: DtmfReceiver::default(),
            pending_keys: VecDeque::new(),
            upsampler: Upsampler::default(),
            downsampler: Downsampler::default(),
            last_frame: vec![0; FRAME_SAMPLES],
            concealed: 0,
            ssrc: rand::random(),
            sequence: rand::random(),
            timestamp: rand::random(),
            latched: false,
            started: Instant::now(),
            hang_up_sent: false,
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
            let session = *lock(&self.shared.session);
            self.receive(&session);
            self.pending_keys
                .extend(lock(&self.shared.signalled_keys).drain(..));
            if self.deliver_input(&session).is_err() {
                break; // the call is gone
            }
            self.send(&session);
        }
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
            let mut stats = lock(&self.shared.stats);
            let Ok((header, payload)) = rtp::parse(&buffer[..size]) else {
                stats.malformed += 1;
                continue;
            };
            stats.packets_received += 1;
            if Some(header.payload_type) == session.dtmf_payload_type {
                if let Some(key) = self.dtmf.receive(&header, payload) {
                    stats.dtmf_keys += 1;
                    self.pending_keys.push_back(key);
                }
            } else if header.payload_type == session.payload_type {
                drop(stats);
                self.latch(from, session);
                let arrival_ms = self.started.elapsed().as_secs_f64() * 1000.0;
                self.jitter.push(
                    header.sequence,
                    header.timestamp,
                    session.codec.clock_rate(),
                    arrival_ms,
                    payload.to_vec(),
                );
            } else {
                stats.foreign_payload += 1;
            }
        }
    }

    /// Symmetric RTP: send to where the peer's audio comes from, which differs from its SDP
    /// address when it is behind NAT.
    fn latch(&mut self, from: SocketAddr, session: &Negotiated) {
        if !self.latched {
            self.latched = true;
            if from != session.remote {
                tracing::info!("RTP peer answers from another address than its SDP; sending there");
                lock(&self.shared.session).remote = from;
            }
        }
    }

    fn decode(codec: Codec, payload: &[u8]) -> Vec<i16> {
        match codec {
            Codec::Pcmu => payload.iter().map(|&b| g711::mulaw_decode(b)).collect(),
            Codec::Pcma => payload.iter().map(|&b| g711::alaw_decode(b)).collect(),
        }
    }

    fn deliver_input(&mut self, session: &Negotiated) -> Result<(), ()> {
        if self.shared.hung_up.load(Ordering::SeqCst) {
            if !self.hang_up_sent {
                self.hang_up_sent = true;
                return self.sender.send(LineInput::HungUp).map_err(|_| ());
            }
            return Ok(());
        }
        let heard = match self.jitter.pop() {
            Playout::Packet(payload) => {
                self.concealed = 0;
                let mut at_8k = Self::decode(session.codec, &payload);
                at_8k.resize(CODEC_FRAME, 0);
                self.last_frame = self.upsampler.process(&at_8k);
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
        let mut frame = vec![0i16; FRAME_SAMPLES];
        {
            let mut playout = lock(&self.shared.playout);
            let n = playout.len().min(FRAME_SAMPLES);
            for (slot, sample) in frame.iter_mut().zip(playout.drain(..n)) {
                *slot = sample;
            }
        }
        self.shared
            .played_level_bits
            .store(frame_rms(&frame).to_bits(), Ordering::Relaxed);
        let at_8k = self.downsampler.process(&frame);
        self.timestamp = self.timestamp.wrapping_add(CODEC_FRAME as u32);
        if !session.direction.sends() {
            return;
        }
        let payload: Vec<u8> = match session.codec {
            Codec::Pcmu => at_8k.iter().map(|&s| g711::mulaw_encode(s)).collect(),
            Codec::Pcma => at_8k.iter().map(|&s| g711::alaw_encode(s)).collect(),
        };
        let header = RtpHeader {
            payload_type: session.payload_type,
            marker: false,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let packet = rtp::write(&header, &payload);
        match self.socket.send_to(&packet, session.remote) {
            Ok(_) => lock(&self.shared.stats).packets_sent += 1,
            Err(e) => tracing::debug!(error = %e, "RTP send failed"),
        }
        let mut stats = lock(&self.shared.stats);
        stats.jitter = self.jitter.stats();
        stats.jitter_ms = self.jitter.jitter_ms().round() as u32;
    }
}
