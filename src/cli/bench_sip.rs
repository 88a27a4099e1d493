//! `callbox bench sip`: the SIP line on loopback. First, calls set up per second: Debian's
//! `sipp` (package sip-tester) places calls with its built-in `uac` scenario (INVITE, ACK, a
//! short pause, BYE) against the box's user agent answering at once and playing a short tone on
//! each call; sipp's own counters say how many succeeded and how long INVITE → 200 OK took.
//! Second, the jitter buffer: a stream of 20 ms PCMU packets sent to a call's media loop with
//! injected loss, reordering and delay jitter, beside what the box's `MediaStats` report.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::{Rng, SeedableRng};

use crate::line::sip::g711;
use crate::line::sip::media::{MediaHandle, MediaStats};
use crate::line::sip::rtp::{self, RtpHeader};
use crate::line::sip::sdp::{Codec, Direction, Negotiated};
use crate::line::sip::{SipOptions, SipUa};
use crate::line::{Line, LineInput};

#[derive(Debug, Args)]
pub struct BenchSipArgs {
    /// Calls sipp places.
    #[arg(long, default_value_t = 200)]
    pub calls: u32,
    /// Calls per second sipp offers (the box's rate is what it manages of it).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Calls in progress at once at most (sipp's limit and the box's).
    #[arg(long, default_value_t = 20)]
    pub concurrent: u32,
    /// How long sipp holds each call before its BYE, in ms.
    #[arg(long, default_value_t = 300)]
    pub hold_ms: u64,
    /// Packets in the jitter-buffer run (20 ms each).
    #[arg(long, default_value_t = 1500)]
    pub packets: u32,
    /// Share of packets never sent, in percent.
    #[arg(long, default_value_t = 3.0)]
    pub loss: f64,
    /// Share of packets sent after their successor, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub reorder: f64,
    /// Largest extra delay of a packet, in ms (uniform from 0).
    #[arg(long, default_value_t = 40.0)]
    pub jitter_ms: f64,
    /// Skip the sipp part (the jitter run only).
    #[arg(long)]
    pub no_sipp: bool,
    /// Write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct CallRate {
    offered_rate: u32,
    calls: u32,
    successful: u64,
    failed: u64,
    seconds: f64,
    calls_per_second: f64,
    /// INVITE → 200 OK, sipp's average, ms.
    setup_ms: Option<f64>,
    answered_by_box: u64,
}

#[derive(Debug, serde::Serialize)]
struct JitterRun {
    packets: u32,
    injected_lost: u32,
    injected_reordered: u32,
    injected_jitter_max_ms: f64,
    /// RFC 3550's interarrival jitter of uniform 0..J delays is about J/3.
    expected_jitter_ms: f64,
    box_received: u64,
    box_lost_by_sequence: i64,
    box_expected: u64,
    box_rtcp_jitter_ms: f64,
    box_buffer_jitter_ms: u32,
    buffer_lost_slots: u64,
    buffer_late: u64,
    buffer_duplicate: u64,
    buffer_underruns: u64,
}

pub fn run(args: BenchSipArgs) -> anyhow::Result<ExitCode> {
    let calls = if args.no_sipp {
        None
    } else {
        Some(call_rate(&args)?)
    };
    let jitter = jitter_run(&args)?;
    if let Some(c) = &calls {
        println!("calls set up over SIP on loopback (sipp uac → the box, answer at once, tone)");
        println!(
            "  offered {} calls at {}/s, {} at once: {} successful, {} failed, {} answered by the box",
            c.calls, c.offered_rate, args.concurrent, c.successful, c.failed, c.answered_by_box
        );
        println!(
            "  {:.1} calls/s ({:.1} s in all); INVITE → 200 OK {}",
            c.calls_per_second,
            c.seconds,
            match c.setup_ms {
                None => "not reported by sipp".to_string(),
                // sipp counts in whole milliseconds.
                Some(ms) if ms < 1.0 => "under 1 ms on average (sipp's resolution)".to_string(),
                Some(ms) => format!("{ms:.1} ms on average"),
            }
        );
    }
    let j = &jitter;
    println!(
        "jitter buffer: {} PCMU packets, injected loss {}, reordered {}, delay 0–{} ms",
        j.packets, j.injected_lost, j.injected_reordered, j.injected_jitter_max_ms
    );
    println!(
        "  box (RTCP view): received {}, expected {}, lost {} (injected {}), jitter {:.1} ms \
         (injected delays give ≈ {:.1})",
        j.box_received,
        j.box_expected,
        j.box_lost_by_sequence,
        j.injected_lost,
        j.box_rtcp_jitter_ms,
        j.expected_jitter_ms
    );
    println!(
        "  box (jitter buffer): lost slots {}, late drops {}, duplicates {}, underruns {}, \
         jitter estimate {} ms",
        j.buffer_lost_slots,
        j.buffer_late,
        j.buffer_duplicate,
        j.buffer_underruns,
        j.box_buffer_jitter_ms
    );
    if let Some(path) = &args.json {
        let figures = serde_json::json!({ "calls": calls, "jitter": jitter });
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A short tone at 16 kHz, what the box says on each benchmark call.
fn tone(ms: usize) -> Vec<i16> {
    (0..ms * 16)
        .map(|i| {
            (6_000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16_000.0).sin()) as i16
        })
        .collect()
}

fn call_rate(args: &BenchSipArgs) -> anyhow::Result<CallRate> {
    let mut options = SipOptions::new("127.0.0.1:0".parse()?);
    options.answer_after_rings = 0;
    options.max_calls = args.concurrent.max(1) * 2;
    let ua = SipUa::start(options)?;
    let box_addr = ua.local_addr();
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let answerer = {
        let (done, answered) = (done.clone(), answered.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let Some(call) = ua.next_call(Duration::from_millis(100)) else {
                    continue;
                };
                answered.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut line = call.line;
                    let _ = line.play(&tone(200));
                    // Until sipp's BYE (or a silent line for 2 s).
                    while let Ok(input) = line.next() {
                        if matches!(input, LineInput::HungUp) {
                            break;
                        }
                    }
                });
            }
        })
    };
    let dir = tempfile::tempdir()?;
    let stats = dir.path().join("stats.csv");
    let started = Instant::now();
    let output = Command::new("sipp")
        .current_dir(dir.path())
        .arg(box_addr.to_string())
        .args(["-sn", "uac", "-i", "127.0.0.1", "-p", "0", "-nostdin"])
        .args(["-m", &args.calls.to_string()])
        .args(["-r", &args.rate.to_string()])
        .args(["-l", &args.concurrent.to_string()])
        .args(["-d", &args.hold_ms.to_string()])
        .args(["-timeout", "120s", "-trace_stat", "-fd", "1", "-stf"])
        .arg(&stats)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let _ = answerer.join();
    let output = match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("sipp is not installed (apt-get install sip-tester), or pass --no-sipp")
        }
        other => other.context("cannot run sipp")?,
    };
    let text = std::fs::read_to_string(&stats).with_context(|| {
        format!(
            "sipp wrote no statistics ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let (successful, failed, setup_ms) = parse_sipp_stats(&text).with_context(|| {
        format!(
            "cannot read sipp's statistics; it said: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok(CallRate {
        offered_rate: args.rate,
        calls: args.calls,
        successful,
        failed,
        seconds,
        calls_per_second: successful as f64 / seconds.max(1e-9),
        setup_ms,
        answered_by_box: answered.load(Ordering::SeqCst),
    })
}

/// Successful and failed calls and the average INVITE → 200 OK time from sipp's `-stf` file
/// (semicolon-separated, a header row, then one row per period; the last row is cumulative).
fn parse_sipp_stats(text: &str) -> anyhow::Result<(u64, u64, Option<f64>)> {
    let mut rows = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = rows.next().context("empty file")?.split(';').collect();
    let last: Vec<&str> = rows.next_back().context("no rows")?.split(';').collect();
    let column = |name: &str| -> Option<&str> {
        let at = header.iter().position(|h| h.trim() == name)?;
        last.get(at).map(|v| v.trim())
    };
    let count = |name: &str| -> anyhow::Result<u64> {
        column(name)
            .with_context(|| format!("no column {name}"))?
            .parse()
            .with_context(|| format!("column {name} is not a count"))
    };
    // "HH:MM:SS:ffffff", the last field a fraction of a second (microseconds in sipp 3.6).
    let setup_ms = column("ResponseTime1(C)").and_then(|v| {
        let parts: Vec<&str> = v.split(':').collect();
        let [h, m, s, fraction] = parts.as_slice() else {
            return None;
        };
        let [h, m, s]: [f64; 3] = [h.parse().ok()?, m.parse().ok()?, s.parse().ok()?];
        let fraction = fraction.parse::<f64>().ok()? / 10f64.powi(fraction.len() as i32);
        Some(((h * 60.0 + m) * 60.0 + s + fraction) * 1000.0)
    });
    Ok((
        count("SuccessfulCall(C)")?,
        count("FailedCall(C)")?,
        setup_ms,
    ))
}

fn jitter_run(args: &BenchSipArgs) -> anyhow::Result<JitterRun> {
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let box_socket = UdpSocket::bind("127.0.0.1:0")?;
    let box_addr = box_socket.local_addr()?;
    let peer: SocketAddr = sender.local_addr()?;
    let mut media = MediaHandle::start(
        box_socket,
        Negotiated {
            codec: Codec::Pcmu,
            payload_type: 0,
            dtmf_payload_type: None,
            remote: peer,
            remote_rtcp: peer,
            rtcp_mux: false,
            direction: Direction::SendRecv,
            ptime_ms: 20,
        },
    )?;
    // The schedule: each packet's send time is its slot plus a random delay; some are dropped,
    // some swapped with their successor.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3550);
    let mut schedule: Vec<(f64, u16)> = Vec::new();
    let mut injected_lost = 0;
    for i in 0..args.packets {
        if rng.random_bool((args.loss / 100.0).clamp(0.0, 1.0)) {
            injected_lost += 1;
            continue;
        }
        let delay = rng.random_range(0.0..=args.jitter_ms.max(0.0));
        schedule.push((f64::from(i) * 20.0 + delay, i as u16));
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut injected_reordered = 0;
    let mut i = 0;
    while i + 1 < schedule.len() {
        if rng.random_bool((args.reorder / 100.0).clamp(0.0, 1.0)) {
            let (a, b) = (schedule[i].1, schedule[i + 1].1);
            schedule[i].1 = b;
            schedule[i + 1].1 = a;
            injected_reordered += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    let payload: Vec<u8> = tone(20)
        .iter()
        .step_by(2)
        .map(|&s| g711::mulaw_encode(s))
        .collect();
    let start = Instant::now();
    // The call's frames are read between packets, as a session reads its line.
    let drain = |media: &MediaHandle| while media.next(Duration::ZERO).is_ok() {};
    {
        for &(at_ms, sequence) in &schedule {
            let due = start + Duration::from_secs_f64(at_ms / 1000.0);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            drain(&media);
            let header = RtpHeader {
                payload_type: 0,
                marker: false,
                sequence,
                timestamp: u32::from(sequence) * 160,
                ssrc: 0x5EED,
            };
            sender.send_to(&rtp::write(&header, &payload), box_addr)?;
        }
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let _ = media.next(Duration::from_millis(20));
        }
    }
    let stats: MediaStats = media.stats();
    media.stop();
    Ok(JitterRun {
        packets: args.packets,
        injected_lost,
        injected_reordered,
        injected_jitter_max_ms: args.jitter_ms,
        expected_jitter_ms: args.jitter_ms / 3.0,
        box_received: stats.packets_received,
        box_lost_by_sequence: stats.rtcp.lost,
        box_expected: stats.rtcp.expected,
        box_rtcp_jitter_ms: f64::from(stats.rtcp.jitter) / 8.0,
        box_buffer_jitter_ms: stats.jitter_ms,
        buffer_lost_slots: stats.jitter.lost,
        buffer_late: stats.jitter.late,
        buffer_duplicate: stats.jitter.duplicate,
        buffer_underruns: stats.jitter.underruns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipp_statistics_are_read_from_the_last_row() {
        let text =
            "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(C);ResponseTime1(C);\n\
                    x;1;1;0;00:00:00:010000;\n\
                    x;5;200;2;00:00:00:012500;\n";
        let (ok, failed, setup) = parse_sipp_stats(text).unwrap();
        assert_eq!((ok, failed), (200, 2));
        assert!(
            setup.is_some_and(|ms| (ms - 12.5).abs() < 1e-9),
            "{setup:?}"
        );
        assert!(parse_sipp_stats("StartTime;\nx;\n").is_err());
    }
}
