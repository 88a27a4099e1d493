//! RTP (RFC 3550) for the call's audio: the packet format, RFC 4733 telephone events (DTMF), and
//! the jitter buffer that turns packets arriving late, early, twice or never into a steady
//! 20 ms stream. Pure data structures: the media loop owns the socket and the clock.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtpError {
    #[error("RTP packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    #[error("RTP header longer than the packet")]
    Truncated,
}

/// The fields of an RTP header the box uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Splits a packet into its header and payload (CSRCs, extension and padding removed).
pub fn parse(packet: &[u8]) -> Result<(RtpHeader, &[u8]), RtpError> {
    if packet.len() < 12 {
        return Err(RtpError::TooShort(packet.len()));
    }
    let version = packet[0] >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = packet[0] & 0x20 != 0;
    let extension = packet[0] & 0x10 != 0;
    let csrc_count = usize::from(packet[0] & 0x0F);
    let mut start = 12 + 4 * csrc_count;
    if extension {
        let words = packet
            .get(start + 2..start + 4)
            .ok_or(RtpError::Truncated)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let mut end = packet.len();
    if padding {
        let pad = usize::from(*packet.last().ok_or(RtpError::Truncated)?);
        end = end.checked_sub(pad).ok_or(RtpError::Truncated)?;
    }
    if start > end {
        return Err(RtpError::Truncated);
    }
    let header = RtpHeader {
        payload_type: packet[1] & 0x7F,
        marker: packet[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
    };
    Ok((header, &packet[start..end]))
}

/// Writes a packet with a plain 12-byte header.
pub fn write(header: &RtpHeader, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + payload.len());
    packet.push(0x80);
    packet.push(header.payload_type & 0x7F | if header.marker { 0x80 } else { 0 });
    packet.extend_from_slice(&header.sequence.to_be_bytes());
    packet.extend_from_slice(&header.timestamp.to_be_bytes());
    packet.extend_from_slice(&header.ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// One RFC 4733 telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        Some(TelephoneEvent {
            event: bytes[0],
            end: bytes[1] & 0x80 != 0,
            volume: bytes[1] & 0x3F,
            duration: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }

    pub fn write(&self) -> [u8; 4] {
        let duration = self.duration.to_be_bytes();
        [
            self.event,
            (self.volume & 0x3F) | if self.end { 0x80 } else { 0 },
            duration[0],
            duration[1],
        ]
    }
}

/// The DTMF key of an RFC 4733 event code.
pub fn dtmf_key(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// The RFC 4733 event code of a DTMF key.
pub fn dtmf_event(key: char) -> Option<u8> {
    match key {
        '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(key as u8 - b'A' + 12),
        _ => None,
    }
}

/// Turns a stream of telephone-event packets (each key is sent many times, with the same
/// timestamp) into one key press each.
#[derive(Default)]
pub struct DtmfReceiver {
    last_timestamp: Option<u32>,
}

impl DtmfReceiver {
    /// The key, the first time a packet of a new event arrives.
    pub fn receive(&mut self, header: &RtpHeader, payload: &[u8]) -> Option<char> {
        let event = TelephoneEvent::parse(payload)?;
        if self.last_timestamp == Some(header.timestamp) {
            return None;
        }
        self.last_timestamp = Some(header.timestamp);
        dtmf_key(event.event)
    }
}

/// Packets (20 ms each) a key the box presses sounds for: 100 ms.
pub const KEY_PACKETS: u32 = 5;
/// Times the end packet of a key is sent (RFC 4733 §2.5.1.4), one per 20 ms.
pub const END_PACKETS: u32 = 3;
/// Quiet 20 ms slots after a key's last end packet before the next key.
pub const KEY_GAP: u32 = 3;
/// RTP timestamp units per 20 ms packet (8 kHz clock).
const EVENT_STEP: u32 = 160;
/// Volume of the box's keys: −10 dBm0.
const KEY_VOLUME: u8 = 10;

/// What the box sends in one 20 ms slot while it has keys to press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// No keys: the box's audio goes out.
    Audio,
    /// A telephone-event packet goes out instead of audio.
    Event {
        /// Set on the first packet of a key.
        marker: bool,
        /// The key's start, the same in all its packets.
        timestamp: u32,
        payload: [u8; 4],
    },
    /// Between keys, or a pause: silence goes out, and the box's audio still waits.
    Quiet,
}

/// One key being sent.
struct Sounding {
    event: u8,
    timestamp: u32,
    /// Packets of it sent so far.
    sent: u32,
}

/// The keys the box presses, as RFC 4733 events (the sending side of [`DtmfReceiver`]): each
/// key is a start packet with the marker bit, updates whose duration grows by 20 ms, and
/// [`END_PACKETS`] end packets, all with the key's start timestamp and new sequence numbers;
/// then [`KEY_GAP`] quiet slots. A pause is [`crate::line::PAUSE_MS`] of quiet.
#[derive(Default)]
pub struct DtmfSender {
    queue: std::collections::VecDeque<crate::line::KeyStep>,
    sounding: Option<Sounding>,
    quiet: u32,
}

impl DtmfSender {
    /// Queues keys after those still to be sent. Keys that are no DTMF key are skipped (the
    /// line names them before they get here).
    pub fn push(&mut self, steps: &[crate::line::KeyStep]) {
        self.queue.extend(
            steps
                .iter()
                .filter(|step| match step {
                    crate::line::KeyStep::Press(key) => dtmf_event(*key).is_some(),
                    crate::line::KeyStep::Pause => true,
                })
                .copied(),
        );
    }

    /// Drops every key not yet sent (the far end no longer takes telephone events).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.sounding = None;
        self.quiet = 0;
    }

    /// 20 ms slots until the last queued key is out.
    pub fn slots_left(&self) -> u32 {
        let per_key = KEY_PACKETS + END_PACKETS - 1 + KEY_GAP;
        let per_pause = (crate::line::PAUSE_MS / crate::line::FRAME_MS) as u32;
        let queued: u32 = self
            .queue
            .iter()
            .map(|step| match step {
                crate::line::KeyStep::Press(_) => per_key,
                crate::line::KeyStep::Pause => per_pause,
            })
            .sum();
        let current = self
            .sounding
            .as_ref()
            .map_or(0, |s| KEY_PACKETS + END_PACKETS - 1 - s.sent + KEY_GAP);
        queued + current + self.quiet
    }

    /// What goes out in the slot whose audio would carry `timestamp`.
    pub fn next_slot(&mut self, timestamp: u32) -> KeySlot {
        if self.sounding.is_none() && self.quiet == 0 {
            match self.queue.pop_front() {
                None => return KeySlot::Audio,
                Some(crate::line::KeyStep::Pause) => {
                    self.quiet = (crate::line::PAUSE_MS / crate::line::FRAME_MS) as u32;
                }
                Some(crate::line::KeyStep::Press(key)) => {
                    self.sounding = dtmf_event(key).map(|event| Sounding {
                        event,
                        timestamp,
                        sent: 0,
                    });
                }
            }
        }
        if let Some(key) = self.sounding.as_mut() {
            key.sent += 1;
            let packet = key.sent.min(KEY_PACKETS);
            let slot = KeySlot::Event {
                marker: key.sent == 1,
                timestamp: key.timestamp,
                payload: TelephoneEvent {
                    event: key.event,
                    end: key.sent >= KEY_PACKETS,
                    volume: KEY_VOLUME,
                    duration: (packet * EVENT_STEP) as u16,
                }
                .write(),
            };
            if key.sent == KEY_PACKETS + END_PACKETS - 1 {
                self.sounding = None;
                self.quiet = KEY_GAP;
            }
            return slot;
        }
        if self.quiet > 0 {
            self.quiet -= 1;
            return KeySlot::Quiet;
        }
        KeySlot::Audio
    }
}

/// What the jitter buffer gives for one 20 ms slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The packet for this slot.
    Packet(Vec<u8>),
    /// The packet for this slot is missing but later ones have arrived: conceal it.
    Lost,
    /// Nothing to play (not started, or ran dry; it refills before playing again).
    Empty,
}

/// Counts kept by the jitter buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub late: u64,
    pub duplicate: u64,
    pub lost: u64,
    pub underruns: u64,
    /// Audio packets dropped unplayed because the buffer had fallen behind the sender by more
    /// than its largest depth (the reading side was held up): the delay goes back down.
    pub trimmed: u64,
}

/// What one sequence number of the stream carried.
enum Slot {
    Audio(Vec<u8>),
    /// Another payload of the same stream (an RFC 4733 telephone event, comfort noise): no
    /// audio slot, so no loss, and no time of its own.
    NotAudio,
}

/// An adaptive jitter buffer for 20 ms packets: packets are ordered by sequence number, the
/// buffer holds back a depth that follows the measured interarrival jitter (RFC 3550 §6.4.1),
/// drops packets that come after their slot was played, reports missing ones as lost, skips
/// the sequence numbers of the stream's other payloads (telephone events sent between audio
/// packets, as baresip does while a key is held), and drops the oldest audio when it has
/// fallen more than its largest depth behind.
pub struct JitterBuffer {
    packets: BTreeMap<u64, Slot>,
    /// Audio slots among `packets`.
    audio_held: usize,
    /// Extended sequence number of the next slot to play; `None` until playout starts.
    next: Option<u64>,
    highest: Option<u64>,
    /// Packets held before playout (re)starts.
    target_depth: usize,
    min_depth: usize,
    max_depth: usize,
    /// Interarrival jitter estimate, in milliseconds.
    jitter_ms: f64,
    last_transit_ms: Option<f64>,
    stats: JitterStats,
}

/// Packets the buffer holds at most; older ones are dropped if the peer floods it.
const MAX_PACKETS: usize = 250;

impl JitterBuffer {
    /// A buffer that starts at `min_depth` packets and grows up to `max_depth`.
    pub fn new(min_depth: usize, max_depth: usize) -> JitterBuffer {
        JitterBuffer {
            packets: BTreeMap::new(),
            audio_held: 0,
            next: None,
            highest: None,
            target_depth: min_depth.max(1),
            min_depth: min_depth.max(1),
            max_depth: max_depth.max(min_depth.max(1)),
            jitter_ms: 0.0,
            last_transit_ms: None,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }

    pub fn target_depth(&self) -> usize {
        self.target_depth
    }

    /// Audio packets waiting to be played.
    pub fn held(&self) -> usize {
        self.audio_held
    }

    /// Extends a 16-bit sequence number to 64 bits, near the highest seen.
    fn extend(&self, sequence: u16) -> u64 {
        let Some(highest) = self.highest else {
            return u64::from(sequence) + (1 << 16);
        };
        let cycle = highest & !0xFFFF;
        let candidates = [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)];
        candidates
            .into_iter()
            .map(|c| c.wrapping_add(u64::from(sequence)))
            .min_by_key(|&c| c.abs_diff(highest))
            .unwrap_or(u64::from(sequence))
    }

    /// Files `slot` under `sequence`; false (nothing filed) when its slot was already played
    /// or it is a copy.
    fn file(&mut self, sequence: u16, slot: Slot) -> bool {
        let extended = self.extend(sequence);
        if self.next.is_some_and(|next| extended < next) {
            if matches!(slot, Slot::Audio(_)) {
                self.stats.late += 1;
            }
            return false;
        }
        if self.packets.contains_key(&extended) {
            if matches!(slot, Slot::Audio(_)) {
                self.stats.duplicate += 1;
            }
            return false;
        }
        self.highest = Some(self.highest.map_or(extended, |h| h.max(extended)));
        if matches!(slot, Slot::Audio(_)) {
            self.audio_held += 1;
        }
        self.packets.insert(extended, slot);
        while self.packets.len() > MAX_PACKETS {
            self.remove_first();
        }
        true
    }

    fn remove_first(&mut self) -> Option<(u64, Slot)> {
        let first = self.packets.pop_first();
        if let Some((_, Slot::Audio(_))) = first {
            self.audio_held -= 1;
        }
        first
    }

    /// Takes a packet that arrived at `arrival_ms` (the receiver's clock) with the RTP timestamp
    /// `timestamp` at `clock_rate`.
    pub fn push(
        &mut self,
        sequence: u16,
        timestamp: u32,
        clock_rate: u32,
        arrival_ms: f64,
        payload: Vec<u8>,
    ) {
        self.stats.received += 1;
        let transit = arrival_ms - f64::from(timestamp) * 1000.0 / f64::from(clock_rate);
        if let Some(last) = self.last_transit_ms {
            let d = (transit - last).abs();
            if d < 1_000.0 {
                self.jitter_ms += (d - self.jitter_ms) / 16.0;
            }
        }
        self.last_transit_ms = Some(transit);
        if !self.file(sequence, Slot::Audio(payload)) {
            return;
        }
        // Depth: enough 20 ms slots to cover about three times the jitter.
        let wanted = (3.0 * self.jitter_ms / 20.0).ceil() as usize + 1;
        self.target_depth = wanted.clamp(self.min_depth, self.max_depth);
    }

    /// Notes a packet of the stream that carries no audio (a telephone event, comfort noise):
    /// its sequence number is skipped, not played as a loss.
    pub fn skip(&mut self, sequence: u16) {
        self.file(sequence, Slot::NotAudio);
    }

    /// The next 20 ms slot.
    pub fn pop(&mut self) -> Playout {
        // Sequence numbers of other payloads at the head take no time.
        while let Some(entry) = self.packets.first_entry() {
            if !matches!(entry.get(), Slot::NotAudio) {
                break;
            }
            let sequence = *entry.key();
            entry.remove();
            if self.next.is_some_and(|next| next <= sequence) {
                self.next = Some(sequence + 1);
            }
        }
        let mut next = match self.next {
            Some(next) => next,
            None => {
                if self.audio_held < self.target_depth {
                    return Playout::Empty;
                }
                let Some((&first, _)) = self.packets.first_key_value() else {
                    return Playout::Empty;
                };
                first
            }
        };
        if self.audio_held > self.max_depth {
            // Far behind the sender (the reading side was held up): back to the target depth.
            while self.audio_held > self.target_depth {
                match self.remove_first() {
                    Some((sequence, slot)) => {
                        if matches!(slot, Slot::Audio(_)) {
                            self.stats.trimmed += 1;
                        }
                        next = next.max(sequence + 1);
                    }
                    None => break,
                }
            }
            while let Some(entry) = self.packets.first_entry() {
                if !matches!(entry.get(), Slot::NotAudio) {
                    break;
                }
                next = next.max(*entry.key() + 1);
                entry.remove();
            }
            if let Some((&first, _)) = self.packets.first_key_value() {
                next = first;
            }
        }
        if let Some(Slot::Audio(payload)) = self.packets.remove(&next) {
            self.audio_held -= 1;
            self.next = Some(next + 1);
            return Playout::Packet(payload);
        }
        if self.audio_held == 0 {
            // Ran dry: wait until the buffer refills to its depth.
            self.packets.clear();
            self.stats.underruns += 1;
            self.next = None;
            return Playout::Empty;
        }
        // Packets after this slot exist: this one is lost (or so late it no longer matters).
        self.stats.lost += 1;
        self.next = Some(next + 1);
        Playout::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sequence: u16) -> RtpHeader {
        RtpHeader {
            payload_type: 0,
            marker: false,
            sequence,
            timestamp: u32::from(sequence) * 160,
            ssrc: 0x1234_5678,
        }
    }

    #[test]
    fn a_written_packet_parses_back() {
        let h = RtpHeader {
            marker: true,
            payload_type: 101,
            ..header(65_535)
        };
        let packet = write(&h, &[1, 2, 3]);
        assert_eq!(parse(&packet).unwrap(), (h, &[1u8, 2, 3][..]));
    }

    #[test]
    fn csrcs_extension_and_padding_are_stripped() {
        let mut packet = write(&header(5), &[]);
        packet[0] |= 0x20 | 0x10 | 0x01; // padding, extension, one CSRC
        packet.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // one-word extension
        packet.extend_from_slice(&[7, 7]); // payload
        packet.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        assert_eq!(parse(&packet).unwrap().1, &[7, 7]);
    }

    #[test]
    fn broken_packets_are_errors_not_panics() {
        assert_eq!(parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(parse(&[0x40; 12]), Err(RtpError::Version(1)));
        let mut lying = write(&header(1), &[]);
        lying[0] |= 0x0F; // fifteen CSRCs that are not there
        assert_eq!(parse(&lying), Err(RtpError::Truncated));
        let mut padded = write(&header(1), &[1]);
        padded[0] |= 0x20;
        *padded.last_mut().unwrap() = 200;
        assert_eq!(parse(&padded), Err(RtpError::Truncated));
    }

    #[test]
    fn a_key_sent_many_times_is_one_press() {
        let mut receiver = DtmfReceiver::default();
        let press = |end, duration| {
            TelephoneEvent {
                event: 5,
                end,
                volume: 10,
                duration,
            }
            .write()
        };
        let h = RtpHeader {
            timestamp: 8000,
            ..header(1)
        };
        assert_eq!(receiver.receive(&h, &press(false, 160)), Some('5'));
        assert_eq!(receiver.receive(&h, &press(false, 320)), None);
        assert_eq!(receiver.receive(&h, &press(true, 800)), None);
        let next = RtpHeader {
            timestamp: 16_000,
            ..h
        };
        assert_eq!(receiver.receive(&next, &press(false, 160)), Some('5'));
        for key in "0123456789*#ABCD".chars() {
            assert_eq!(dtmf_event(key).and_then(dtmf_key), Some(key));
        }
    }

    #[test]
    fn a_pressed_key_is_a_start_updates_and_three_ends_at_one_timestamp() {
        use crate::line::KeyStep;
        let mut sender = DtmfSender::default();
        assert_eq!(sender.next_slot(0), KeySlot::Audio);
        sender.push(&[KeyStep::Press('7'), KeyStep::Press('#')]);
        let per_key = KEY_PACKETS + END_PACKETS - 1 + KEY_GAP;
        assert_eq!(sender.slots_left(), 2 * per_key);
        let mut slots = Vec::new();
        let mut timestamp = 1_000u32;
        while sender.slots_left() > 0 {
            slots.push(sender.next_slot(timestamp));
            timestamp += 160;
        }
        assert_eq!(slots.len() as u32, 2 * per_key);
        assert_eq!(sender.next_slot(timestamp), KeySlot::Audio);
        let events: Vec<(bool, u32, TelephoneEvent)> = slots
            .iter()
            .filter_map(|slot| match slot {
                KeySlot::Event {
                    marker,
                    timestamp,
                    payload,
                } => Some((*marker, *timestamp, TelephoneEvent::parse(payload).unwrap())),
                _ => None,
            })
            .collect();
        assert_eq!(events.len(), 14);
        let seven = &events[..7];
        assert!(seven.iter().all(|(_, ts, e)| *ts == 1_000 && e.event == 7));
        assert_eq!(
            seven.iter().map(|(m, _, _)| *m).collect::<Vec<_>>(),
            [true, false, false, false, false, false, false]
        );
        assert_eq!(
            seven.iter().map(|(_, _, e)| e.duration).collect::<Vec<_>>(),
            [160, 320, 480, 640, 800, 800, 800]
        );
        assert_eq!(
            seven.iter().map(|(_, _, e)| e.end).collect::<Vec<_>>(),
            [false, false, false, false, true, true, true]
        );
        // The second key starts after the gap, at its own timestamp.
        assert_eq!(slots[7..10], [KeySlot::Quiet; 3]);
        let (marker, start, pound) = events[7];
        assert!(marker);
        assert_eq!(start, 1_000 + 10 * 160);
        assert_eq!(pound.event, 11);
    }

    #[test]
    fn a_pause_is_a_second_of_quiet_and_clear_drops_the_rest() {
        use crate::line::KeyStep;
        let mut sender = DtmfSender::default();
        sender.push(&[KeyStep::Pause, KeyStep::Press('1')]);
        for _ in 0..50 {
            assert_eq!(sender.next_slot(0), KeySlot::Quiet);
        }
        assert!(matches!(
            sender.next_slot(0),
            KeySlot::Event { marker: true, .. }
        ));
        sender.clear();
        assert_eq!(sender.slots_left(), 0);
        assert_eq!(sender.next_slot(0), KeySlot::Audio);
    }

    #[test]
    fn reordered_packets_play_in_order_and_late_ones_are_dropped() {
        let mut jb = JitterBuffer::new(2, 10);
        let arrival = |seq: u16| f64::from(seq) * 20.0;
        for seq in [10u16, 12, 11, 13] {
            jb.push(
                seq,
                u32::from(seq) * 160,
                8_000,
                arrival(seq),
                vec![seq as u8],
            );
        }
        assert_eq!(jb.pop(), Playout::Packet(vec![10]));
        assert_eq!(jb.pop(), Playout::Packet(vec![11]));
        jb.push(10, 1600, 8_000, 300.0, vec![10]); // a copy of one already played
        assert_eq!(jb.stats().late, 1);
        jb.push(13, 13 * 160, 8_000, 260.0, vec![13]);
        assert_eq!(jb.stats().duplicate, 1);
        assert_eq!(jb.pop(), Playout::Packet(vec![12]));
        assert_eq!(jb.pop(), Playout::Packet(vec![13]));
        assert_eq!(jb.pop(), Playout::Empty);
        assert_eq!(jb.stats().underruns, 1);
    }

    #[test]
    fn a_missing_packet_is_reported_lost_and_playout_goes_on() {
        let mut jb = JitterBuffer::new(1, 10);
        for seq in [1u16, 3, 4] {
            jb.push(
                seq,
                u32::from(seq) * 160,
                8_000,
                f64::from(seq) * 20.0,
                vec![seq as u8],
            );
        }
        assert_eq!(jb.pop(), Playout::Packet(vec![1]));
        assert_eq!(jb.pop(), Playout::Lost);
        assert_eq!(jb.pop(), Playout::Packet(vec![3]));
        assert_eq!(jb.stats().lost, 1);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut jb = JitterBuffer::new(1, 10);
        for (i, seq) in [65_534u16, 65_535, 0, 1].into_iter().enumerate() {
            jb.push(seq, i as u32 * 160, 8_000, i as f64 * 20.0, vec![i as u8]);
        }
        for i in 0..4u8 {
            assert_eq!(jb.pop(), Playout::Packet(vec![i]));
        }
    }

    #[test]
    fn the_depth_grows_with_jitter() {
        let mut steady = JitterBuffer::new(2, 12);
        let mut jittery = JitterBuffer::new(2, 12);
        for seq in 0..200u16 {
            let sent = f64::from(seq) * 20.0;
            steady.push(seq, u32::from(seq) * 160, 8_000, sent + 5.0, vec![]);
            let wobble = if seq % 2 == 0 { 0.0 } else { 45.0 };
            jittery.push(seq, u32::from(seq) * 160, 8_000, sent + wobble, vec![]);
        }
        assert_eq!(steady.target_depth(), 2);
        assert!(
            jittery.target_depth() >= 6,
            "depth {}",
            jittery.target_depth()
        );
        assert!(jittery.jitter_ms() > 30.0);
    }

    #[test]
    fn telephone_events_between_audio_packets_are_no_losses() {
        // baresip while a key is held: audio on even sequence numbers, events on odd ones.
        let mut jb = JitterBuffer::new(2, 10);
        let mut played = Vec::new();
        for seq in 0..400u16 {
            if seq % 2 == 0 {
                let sent = f64::from(seq / 2) * 20.0;
                jb.push(seq, u32::from(seq / 2) * 160, 8_000, sent, vec![seq as u8]);
            } else {
                jb.skip(seq);
                // One 20 ms tick per audio packet.
                played.push(jb.pop());
            }
        }
        let lost = played.iter().filter(|p| **p == Playout::Lost).count();
        assert_eq!(lost, 0, "{:?}", jb.stats());
        assert_eq!(jb.stats().lost, 0);
        assert!(
            jb.held() <= 3,
            "the delay stays at its depth: {}",
            jb.held()
        );
        let packets = played
            .iter()
            .filter(|p| matches!(p, Playout::Packet(_)))
            .count();
        assert!(packets >= 197, "{packets} of 200 played");
    }

    #[test]
    fn a_buffer_far_behind_the_sender_drops_back_to_its_depth() {
        let mut jb = JitterBuffer::new(2, 10);
        // The reader was held up for 600 ms: 30 packets waiting.
        for seq in 0..30u16 {
            jb.push(seq, u32::from(seq) * 160, 8_000, 0.0, vec![seq as u8]);
        }
        let first = jb.pop();
        assert!(matches!(first, Playout::Packet(_)), "{first:?}");
        assert!(jb.held() <= jb.target_depth(), "{} held", jb.held());
        assert_eq!(jb.stats().trimmed, 30 - 1 - jb.held() as u64);
        assert_eq!(jb.stats().lost, 0);
        // The newest audio plays on, in order.
        assert_eq!(first, Playout::Packet(vec![(29 - jb.held()) as u8]));
    }

    #[test]
    fn random_packets_and_sequences_never_panic_and_stay_bounded() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3550);
        let mut jb = JitterBuffer::new(2, 10);
        let mut dtmf = DtmfReceiver::default();
        for i in 0..50_000u32 {
            let length = rng.random_range(0..64);
            let packet: Vec<u8> = (0..length).map(|_| rng.random()).collect();
            if let Ok((header, payload)) = parse(&packet) {
                let _ = dtmf.receive(&header, payload);
                jb.push(
                    header.sequence,
                    header.timestamp,
                    8_000,
                    f64::from(i) * 20.0,
                    payload.to_vec(),
                );
            }
            if i % 2 == 0 {
                let _ = jb.pop();
            }
            assert!(jb.packets.len() <= MAX_PACKETS);
        }
    }
}
