// SPDX-License-Identifier: GPL-2.0-only
//! Continuous DMA through a live update: while a guest test kexecs, the
//! host streams numbered UDP frames into the VM's igb NIC, then checks
//! that the device kept writing them while no kernel polled it.
//!
//! The guest drives the stream with KTAP diagnostics (`# ` lines):
//!
//! - `stream: start run=<8 hex digits> rate=<frames per second>` starts
//!   data frames seq 0, 1, 2, ... at that fixed rate;
//! - `stream: stop` ends them; an END frame then goes out every 100 ms
//!   until `stream: result ...` (key=value pairs) or for 30 s;
//! - `lu: freeze last=<seq> head=<idx>`, a runner line with
//!   `kexec into stage N`, `gtest: start <test> stage N` (N > 1: the new
//!   kernel's userspace) and `lu: adopted buffered=<K> first=<seq>
//!   last=<seq>` mark the live update(s); each line gets its host arrival
//!   time.
//!
//! The VMs of these tests also trace what would disturb the igb PF or
//! its VF across a kexec ([`DEVICE_EVENTS`]: resets, SR-IOV events,
//! config writes); [`UNDISTURBED_TESTS`] fail on any of them between the
//! runner's `kexec into stage N` line and `lu: adopted`.
//!
//! # Frame format
//!
//! This is the authoritative description; the guest's parser is
//! `tools/selftests/guest/src/stream.rs`. Ethernet to ff:ff:ff:ff:ff:ff
//! from 02:00:00:00:00:01, type IPv4; IPv4 without options from 10.0.2.2
//! to 10.0.2.15, identification = seq as u16, DF, TTL 64, UDP, valid
//! header checksum; UDP 5000 -> 5001 with a valid checksum (a computed 0
//! is sent as 0xffff). UDP payload, little endian:
//!
//! | offset | field |
//! |--------|-------|
//! | 0  | u32 magic 0x4d52_5453 |
//! | 4  | u32 run id (from the start line) |
//! | 8  | u64 seq (data: 0, 1, ...; END: u64::MAX) |
//! | 16 | u64 send time, host CLOCK_REALTIME ns |
//! | 24 | u32 kind (0 data, 1 END) |
//! | 28 | u32 count (END: data frames sent; data: 0) |
//! | 32 | pattern: byte i (from offset 32) = (seq * 31 + i) as u8 |
//! | len - 4 | u32 CRC-32 (zlib's) of the payload before it |
//!
//! Payload length: data frame seq: 36 + seq * 7919 % 989 (36..=1024);
//! END: 36.

use crate::ktap;
use crate::util::Result;
use crate::vm::NetBackend;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const MAGIC: u32 = 0x4d52_5453;
pub const KIND_DATA: u32 = 0;
pub const KIND_END: u32 = 1;
/// The seq field of END frames.
pub const END_SEQ: u64 = u64::MAX;

/// Guest tests that stream: their VMs get the device write trace.
pub const STREAM_TESTS: &[&str] = &["vfio_lu_stream", "vfio_lu_soak", "vfio_lu_stream_vf"];

/// Stream tests whose igb PF (00:02.0) and VF0 (00:12.0) nothing may
/// reset, reconfigure for SR-IOV or stop bus mastering between the kexec
/// and the adoption ([`DEVICE_EVENTS`]). Not `vfio_lu_stream`: without
/// an adopted SR-IOV state the next kernel's enumeration writes the PF's
/// SR-IOV capability, as it may.
pub const UNDISTURBED_TESTS: &[&str] = &["vfio_lu_stream_vf"];

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_IP: [u8; 4] = [10, 0, 2, 2];
const DST_IP: [u8; 4] = [10, 0, 2, 15];
const SRC_PORT: u16 = 5000;
const DST_PORT: u16 = 5001;
const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Payload bytes before the pattern.
const PAYLOAD_HEADER: usize = 32;
/// Smallest payload: header and CRC.
const MIN_PAYLOAD: usize = PAYLOAD_HEADER + 4;

/// How often and how long END frames repeat after `stream: stop`: the
/// guest may be between polls, and must learn the count however late.
const END_EVERY: Duration = Duration::from_millis(100);
const END_FOR: Duration = Duration::from_secs(30);
/// A sender that falls further behind its schedule than this many frames
/// (host preempted) restarts the schedule rather than catch up: a burst
/// of a whole stall's frames would not be the fixed rate the guest and
/// the analysis assume.
const MAX_CATCH_UP: u64 = 4;

/// Device write gaps below this pass whatever the rate: the VMM-less
/// window must not be a DMA blackout, but TCG and host scheduling jitter
/// of a few tens of ms are not the device stopping.
const BLACKOUT_FLOOR_NS: u64 = 200_000_000;

/// QEMU trace events of igb's receive path (igb reuses e1000e's): one
/// line per frame written to the guest's ring, or dropped for lack of
/// descriptors.
pub const TRACE_WRITTEN: &str = "e1000e_rx_written_to_guest";
pub const TRACE_NOT_WRITTEN: &str = "e1000e_rx_not_written_to_guest";

/// QEMU's config write event: `<device> <bus>:<slot>.<fn> @0x<offset> <-
/// 0x<value>`, naming the function (`igb` the PF, `igbvf` a VF).
const TRACE_CFG_WRITE: &str = "pci_cfg_write";

/// QEMU trace events that would show the igb PF or its VF disturbed, as
/// `-trace` patterns (a `*` ends one), with why one fails an
/// [`UNDISTURBED_TESTS`] live update. Config writes fail only as
/// [`cfg_write_disturbs`] says.
pub const DEVICE_EVENTS: &[(&str, &str)] = &[
    ("igb_core_vf_reset", "VF reset"),
    ("sriov_*", "SR-IOV state change"),
    ("e1000e_cb_qdev_reset_hold", "PF reset"),
    ("e1000e_core_ctrl_sw_reset", "PF software reset (CTRL.RST)"),
    (TRACE_CFG_WRITE, "config write"),
];

/// The PF, its VF0 (devfn 0x10 + SR-IOV offset 0x80) and the PF's SR-IOV
/// capability, as QEMU's config write event names them.
const PF_BDF: &str = "00:02.0";
const VF_BDF: &str = "00:12.0";
const SRIOV_CAP: std::ops::RangeInclusive<u32> = 0x160..=0x19f;
const PCI_COMMAND: u32 = 0x4;
const PCI_COMMAND_MASTER: u32 = 0x4;

/// Every event a stream VM traces, as `-trace` patterns.
pub fn trace_events() -> impl Iterator<Item = &'static str> {
    [TRACE_WRITTEN, TRACE_NOT_WRITTEN]
        .into_iter()
        .chain(DEVICE_EVENTS.iter().map(|(pattern, _)| *pattern))
}

/// Host wall-clock time in ns since the Unix epoch: the clock of the
/// frames' send times, the console arrival times and QEMU's trace.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 of IEEE 802.3 as zlib computes it (reflected 0xEDB88320, init
/// and final xor 0xFFFFFFFF).
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Ones' complement sum of big-endian 16-bit words (odd tail zero-padded)
/// added to `acc`, not yet folded.
fn ones_sum(data: &[u8], acc: u32) -> u32 {
    data.chunks(2).fold(acc, |acc, w| {
        acc + u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))
    })
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// UDP payload bytes of a frame.
pub fn payload_len(seq: u64, kind: u32) -> usize {
    if kind == KIND_END {
        MIN_PAYLOAD
    } else {
        // seq * 7919 % 989 without overflow for any seq.
        MIN_PAYLOAD + ((seq % 989) * 7919 % 989) as usize
    }
}

/// One Ethernet frame of the stream (see the module documentation).
pub fn stream_frame(run_id: u32, seq: u64, kind: u32, count: u32, t_send_ns: u64) -> Vec<u8> {
    let payload = payload_len(seq, kind);
    let udp_len = UDP_LEN + payload;
    let ip_len = IP_LEN + udp_len;
    let mut f = Vec::with_capacity(ETH_LEN + ip_len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());

    let ip = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&(seq as u16).to_be_bytes());
    f.extend_from_slice(&0x4000u16.to_be_bytes());
    f.extend_from_slice(&[64, 17, 0, 0]);
    f.extend_from_slice(&SRC_IP);
    f.extend_from_slice(&DST_IP);
    let sum = !fold(ones_sum(&f[ip..], 0));
    f[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());

    let udp = f.len();
    f.extend_from_slice(&SRC_PORT.to_be_bytes());
    f.extend_from_slice(&DST_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);

    let body = f.len();
    f.extend_from_slice(&MAGIC.to_le_bytes());
    f.extend_from_slice(&run_id.to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&t_send_ns.to_le_bytes());
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&count.to_le_bytes());
    let base = seq.wrapping_mul(31);
    f.extend((0..payload - MIN_PAYLOAD).map(|i| base.wrapping_add(i as u64) as u8));
    let crc = crc32(&f[body..]);
    f.extend_from_slice(&crc.to_le_bytes());

    // RFC 768: the sum covers a pseudo-header of addresses, protocol and
    // UDP length; 0 means "no checksum", so a computed 0 goes out as 0xffff.
    let pseudo = ones_sum(&DST_IP, ones_sum(&SRC_IP, 17 + udp_len as u32));
    let sum = match !fold(ones_sum(&f[udp..], pseudo)) {
        0 => 0xffff,
        s => s,
    };
    f[udp + 6..udp + 8].copy_from_slice(&sum.to_be_bytes());
    f
}

/// `key=value` words of a diagnostic line.
pub fn key_values(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A timestamped event of a live update inside a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// `lu: freeze`: the old VMM stopped polling; `last` is the last data
    /// seq it handled, `head` its ring index.
    Freeze {
        last: Option<u64>,
        head: Option<u64>,
    },
    /// The runner is about to kexec into `stage`.
    Kexec { stage: u32 },
    /// `gtest: start <test> stage N` with N > 1: the new kernel's
    /// userspace runs.
    Userspace { stage: u32 },
    /// `lu: adopted`: the new VMM re-bound the device and found
    /// `buffered` frames, seqs `first..=last`, already in the ring.
    Adopted {
        buffered: u64,
        first: Option<u64>,
        last: Option<u64>,
    },
    /// `stream: stop`.
    Stop,
    /// `stream: result`.
    Result,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// Host arrival time of the console line (CLOCK_REALTIME ns).
    pub t_ns: u64,
    pub mark: Mark,
}

/// Everything known about one stream, for [`check`], [`timeline`] and
/// [`write_svg`].
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    /// The guest test that started it.
    pub test: String,
    pub run_id: u32,
    /// Frames per second.
    pub rate: u32,
    /// Arrival time of the start line; the timeline's zero.
    pub start_ns: u64,
    /// Send time of data frame seq k at index k (CLOCK_REALTIME ns).
    pub sends: Vec<u64>,
    pub end_frames: u64,
    pub send_errors: u64,
    pub first_send_error: Option<String>,
    /// Times the sender fell behind and restarted its schedule.
    pub late_restarts: u64,
    /// Live update events, in arrival order.
    pub markers: Vec<Marker>,
    /// The guest's `stream: result` fields.
    pub result: Option<BTreeMap<String, String>>,
    /// Traced device write time of data frame seq k at index k; `None`:
    /// not traced.
    pub device_writes: Option<Vec<u64>>,
    /// Frames the device dropped for lack of descriptors, if traced.
    pub device_drops: Option<u64>,
    /// The [`DEVICE_EVENTS`] traced during the stream; `None`: not traced.
    pub device_events: Option<Vec<DeviceEvent>>,
}

/// What a console diagnostic means to the streamer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    TestStart { test: String, stage: u32 },
    StreamStart { run_id: u32, rate: u32 },
    StreamStop,
    StreamResult(BTreeMap<String, String>),
    Mark(Mark),
}

/// A number the guest printed; u64::MAX ("none") is absent.
fn seq_of(map: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .filter(|&v| v != u64::MAX)
}

/// Parses the text of a `# ` line; `None`: not ours, or malformed.
fn parse_event(text: &str) -> Option<Event> {
    if let Some(rest) = text.strip_prefix("gtest: start ") {
        let mut words = rest.split_whitespace();
        let test = words.next()?.to_owned();
        let stage = match (words.next(), words.next()) {
            (Some("stage"), Some(n)) => n.parse().ok()?,
            _ => 1,
        };
        return Some(Event::TestStart { test, stage });
    }
    if let Some(rest) = text.strip_prefix("stream: start ") {
        let kv = key_values(rest);
        let run_id = u32::from_str_radix(kv.get("run")?, 16).ok()?;
        let rate = kv.get("rate")?.parse().ok().filter(|&r| r > 0)?;
        return Some(Event::StreamStart { run_id, rate });
    }
    if text.trim_end() == "stream: stop" {
        return Some(Event::StreamStop);
    }
    if let Some(rest) = text.strip_prefix("stream: result ") {
        return Some(Event::StreamResult(key_values(rest)));
    }
    if let Some(rest) = text.strip_prefix("lu: freeze ") {
        let kv = key_values(rest);
        return Some(Event::Mark(Mark::Freeze {
            last: seq_of(&kv, "last"),
            head: seq_of(&kv, "head"),
        }));
    }
    if let Some(rest) = text.strip_prefix("lu: adopted ") {
        let kv = key_values(rest);
        return Some(Event::Mark(Mark::Adopted {
            buffered: seq_of(&kv, "buffered").unwrap_or(0),
            first: seq_of(&kv, "first"),
            last: seq_of(&kv, "last"),
        }));
    }
    if let Some((_, rest)) = text.split_once("kexec into stage ") {
        let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
        return Some(Event::Mark(Mark::Kexec {
            stage: digits.parse().ok()?,
        }));
    }
    None
}

/// Where the sender thread is; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Data,
    End,
    Quit,
}

/// What the sender thread did.
#[derive(Debug, Default)]
struct SendLog {
    sends: Vec<u64>,
    end_frames: u64,
    errors: u64,
    first_error: Option<String>,
    late_restarts: u64,
}

type Control = Arc<(Mutex<Phase>, Condvar)>;

fn lock(ctl: &Mutex<Phase>) -> MutexGuard<'_, Phase> {
    ctl.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread sending one stream.
struct Streamer {
    ctl: Control,
    thread: Option<JoinHandle<SendLog>>,
}

impl Streamer {
    fn start(net: NetBackend, run_id: u32, rate: u32) -> Result<Self> {
        let ctl: Control = Arc::new((Mutex::new(Phase::Data), Condvar::new()));
        let thread_ctl = Arc::clone(&ctl);
        let thread = std::thread::Builder::new()
            .name("xtask-stream".into())
            .spawn(move || send_loop(&net, run_id, rate, &thread_ctl))
            .map_err(|e| format!("start the stream thread: {e}"))?;
        Ok(Streamer {
            ctl,
            thread: Some(thread),
        })
    }

    fn advance(&self, to: Phase) {
        let (m, cv) = &*self.ctl;
        let mut phase = lock(m);
        if to > *phase {
            *phase = to;
            cv.notify_all();
        }
    }

    fn finish(mut self) -> SendLog {
        self.advance(Phase::Quit);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.advance(Phase::Quit);
            let _ = t.join();
        }
    }
}

/// Offset of frame `k` of a schedule at `rate` frames per second.
fn slot(k: u64, rate: u32) -> Duration {
    Duration::from_nanos(k.saturating_mul(1_000_000_000) / u64::from(rate))
}

/// The sender: data frames on an absolute schedule (frame k at
/// origin + k / rate) until told to stop, then END frames.
fn send_loop(net: &NetBackend, run_id: u32, rate: u32, ctl: &Control) -> SendLog {
    let (m, cv) = &**ctl;
    let mut log = SendLog::default();
    let mut origin = Instant::now();
    let mut origin_seq = 0u64;
    let mut next_end = Instant::now();
    let mut end_until: Option<Instant> = None;
    let mut phase = lock(m);
    loop {
        let now = Instant::now();
        let wake = match *phase {
            Phase::Quit => break,
            Phase::Data => {
                let seq = log.sends.len() as u64;
                let due = origin + slot(seq - origin_seq, rate);
                if now < due {
                    due
                } else {
                    if now - due > slot(MAX_CATCH_UP, rate) {
                        origin = now;
                        origin_seq = seq;
                        log.late_restarts += 1;
                    }
                    // Not under the lock: the console loop must not wait
                    // for a send to change the phase.
                    drop(phase);
                    let t = realtime_ns();
                    match net.send_frame(&stream_frame(run_id, seq, KIND_DATA, 0, t)) {
                        Ok(()) => log.sends.push(t),
                        Err(e) => {
                            // Same seq again one slot later: the stream
                            // must stay gapless.
                            log.errors += 1;
                            log.first_error.get_or_insert(e);
                            origin = Instant::now() + slot(1, rate);
                            origin_seq = seq;
                        }
                    }
                    phase = lock(m);
                    continue;
                }
            }
            Phase::End => {
                let until = *end_until.get_or_insert(now + END_FOR);
                if now >= until {
                    break;
                }
                if now < next_end {
                    next_end.min(until)
                } else {
                    drop(phase);
                    let count = log.sends.len() as u32;
                    let frame = stream_frame(run_id, END_SEQ, KIND_END, count, realtime_ns());
                    match net.send_frame(&frame) {
                        Ok(()) => log.end_frames += 1,
                        Err(e) => {
                            log.errors += 1;
                            log.first_error.get_or_insert(e);
                        }
                    }
                    next_end = now + END_EVERY;
                    phase = lock(m);
                    continue;
                }
            }
        };
        phase = cv
            .wait_timeout(phase, wake.saturating_duration_since(now))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    log
}

struct Active {
    report: StreamReport,
    streamer: Streamer,
}

/// Follows a VM's console for stream lines: runs the sender threads and
/// collects one [`StreamReport`] per stream.
pub struct Monitor {
    /// Cloned for each stream's thread.
    net: NetBackend,
    /// The test of the latest `gtest: start` line.
    test: String,
    active: Option<Active>,
    reports: Vec<StreamReport>,
}

impl Monitor {
    pub fn new(net: &NetBackend) -> Result<Self> {
        Ok(Monitor {
            net: net.try_clone()?,
            test: String::new(),
            active: None,
            reports: Vec::new(),
        })
    }

    /// Handles one console line that arrived at `t_ns`.
    pub fn line(&mut self, t_ns: u64, raw: &str) {
        let Some(text) =
            ktap::without_printk(raw.trim_end_matches(['\r', '\n'])).strip_prefix("# ")
        else {
            return;
        };
        let Some(event) = parse_event(text) else {
            if text.starts_with("stream: ") {
                eprintln!("xtask: ignored a malformed stream line: {text}");
            }
            return;
        };
        match event {
            Event::TestStart { test, stage } => {
                // Another test: its predecessor's stream (and END frames)
                // is over, whether or not it reported a result.
                if self.active.as_ref().is_some_and(|a| a.report.test != test) {
                    self.end_stream();
                }
                self.test = test;
                if stage > 1 {
                    self.mark(t_ns, Mark::Userspace { stage });
                }
            }
            Event::StreamStart { run_id, rate } => {
                self.end_stream();
                self.start_stream(t_ns, run_id, rate);
            }
            Event::StreamStop => {
                if let Some(a) = &self.active {
                    a.streamer.advance(Phase::End);
                }
                self.mark(t_ns, Mark::Stop);
            }
            Event::StreamResult(fields) => {
                if let Some(a) = &mut self.active {
                    a.report.result = Some(fields);
                }
                self.mark(t_ns, Mark::Result);
                self.end_stream();
            }
            Event::Mark(m) => self.mark(t_ns, m),
        }
    }

    fn start_stream(&mut self, t_ns: u64, run_id: u32, rate: u32) {
        let mut report = StreamReport {
            test: self.test.clone(),
            run_id,
            rate,
            start_ns: t_ns,
            ..StreamReport::default()
        };
        let started = self
            .net
            .try_clone()
            .and_then(|net| Streamer::start(net, run_id, rate));
        match started {
            Ok(streamer) => self.active = Some(Active { report, streamer }),
            Err(e) => {
                report.send_errors = 1;
                report.first_send_error = Some(e);
                self.reports.push(report);
            }
        }
    }

    fn mark(&mut self, t_ns: u64, mark: Mark) {
        if let Some(a) = &mut self.active {
            a.report.markers.push(Marker { t_ns, mark });
        }
    }

    fn end_stream(&mut self) {
        if let Some(Active {
            mut report,
            streamer,
        }) = self.active.take()
        {
            let log = streamer.finish();
            report.sends = log.sends;
            report.end_frames = log.end_frames;
            report.send_errors += log.errors;
            report.first_send_error = report.first_send_error.or(log.first_error);
            report.late_restarts = log.late_restarts;
            self.reports.push(report);
        }
    }

    /// Stops a stream still running (the VM is gone) and returns all.
    pub fn finish(mut self) -> Vec<StreamReport> {
        self.end_stream();
        std::mem::take(&mut self.reports)
    }
}

/// One receive event of QEMU's igb trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxEvent {
    /// Wall-clock time (QEMU's gettimeofday, µs resolution) in ns.
    pub t_ns: u64,
    pub queue: u32,
    /// False: dropped, no free descriptor.
    pub written: bool,
}

/// Nanoseconds of a decimal fraction ("5" is 0.5 s).
fn fraction_ns(digits: &str) -> Option<u64> {
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let d = &digits[..digits.len().min(9)];
    format!("{d:0<9}").parse().ok()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2025-08-20T06:27:00.123456Z` in ns since the epoch.
fn iso8601_ns(s: &str) -> Option<u64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, mo, d) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, mi, sec) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec;
    Some(u64::try_from(secs).ok()? * 1_000_000_000 + fraction_ns(frac)?)
}

/// Time and text (`<event> <arguments>`) of one line of QEMU's `log`
/// trace backend run with `-msg timestamp=on`. QEMU 10.0 writes
/// `<tid>@<sec>.<usec>:<event> <arguments>`; later QEMUs prefix an ISO
/// 8601 UTC time and a thread id in parentheses instead, which is
/// accepted too.
fn trace_record(line: &str) -> Option<(u64, &str)> {
    let stamped = line.split_once(':').and_then(|(head, text)| {
        let (tid, stamp) = head.split_once('@')?;
        let (sec, frac) = stamp.split_once('.')?;
        if tid.is_empty() || !tid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((
            sec.parse::<u64>().ok()? * 1_000_000_000 + fraction_ns(frac)?,
            text,
        ))
    });
    if stamped.is_some() {
        return stamped;
    }
    let (stamp, mut text) = line.split_once(' ')?;
    let t_ns = iso8601_ns(stamp)?;
    while let Some(rest) = text.trim_start().strip_prefix('(') {
        text = rest.split_once(')')?.1;
    }
    Some((t_ns, text.trim_start()))
}

/// The receive event of a trace record ([`trace_record`]), if it is one:
/// `e1000e_rx_written_to_guest Received packet written to guest (queue
/// 0)` or its `not_written` twin.
fn rx_event(t_ns: u64, text: &str) -> Option<RxEvent> {
    let (name, args) = text.split_once(' ').unwrap_or((text, ""));
    let written = match name {
        TRACE_WRITTEN => true,
        TRACE_NOT_WRITTEN => false,
        _ => return None,
    };
    let queue = args
        .split_once("(queue ")
        .and_then(|(_, q)| q.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    Some(RxEvent {
        t_ns,
        queue,
        written,
    })
}

/// One traced event of [`DEVICE_EVENTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    /// Wall-clock time in ns, as for [`RxEvent`].
    pub t_ns: u64,
    /// The event's name and arguments as QEMU printed them.
    pub text: String,
}

/// The [`DEVICE_EVENTS`] entry that names `event`, if any.
fn device_event(event: &str) -> Option<&'static (&'static str, &'static str)> {
    DEVICE_EVENTS
        .iter()
        .find(|(pattern, _)| match pattern.strip_suffix('*') {
            Some(prefix) => event.starts_with(prefix),
            None => event == *pattern,
        })
}

/// Function, offset and value of a config write's arguments (read from
/// the right: the device name may hold spaces).
fn parse_cfg_write(args: &str) -> Option<(&str, u32, u32)> {
    let mut words = args.split_whitespace().rev();
    let value = words.next()?.strip_prefix("0x")?;
    if words.next()? != "<-" {
        return None;
    }
    let offset = words.next()?.strip_prefix("@0x")?;
    let bdf = words.next()?;
    Some((
        bdf,
        u32::from_str_radix(offset, 16).ok()?,
        u32::from_str_radix(value, 16).ok()?,
    ))
}

/// Why a config write disturbs the preserved PF or VF, if it does: it
/// writes the PF's SR-IOV capability (VF Enable, NumVFs, VF BARs), or a
/// command register with bus mastering off (the PF's gates the VF's
/// receive in QEMU). INTx or memory-enable toggles that keep bus
/// mastering pass.
fn cfg_write_disturbs(args: &str) -> Option<&'static str> {
    let Some((bdf, offset, value)) = parse_cfg_write(args) else {
        return Some("config write not understood");
    };
    if bdf == PF_BDF && SRIOV_CAP.contains(&offset) {
        Some("write into the PF's SR-IOV capability")
    } else if offset == PCI_COMMAND
        && [PF_BDF, VF_BDF].contains(&bdf)
        && value & PCI_COMMAND_MASTER == 0
    {
        Some("bus mastering cleared")
    } else {
        None
    }
}

/// Why a traced device event disturbs the PF or VF; `None`: harmless.
fn disturbance(text: &str) -> Option<&'static str> {
    let (name, args) = text.split_once(' ').unwrap_or((text, ""));
    match device_event(name)? {
        (TRACE_CFG_WRITE, _) => cfg_write_disturbs(args),
        (_, why) => Some(why),
    }
}

/// The events of a QEMU trace file that the stream checks read.
#[derive(Debug, Default)]
pub struct Trace {
    pub rx: Vec<RxEvent>,
    pub device: Vec<DeviceEvent>,
}

/// Sorts trace lines into receive and device events.
pub fn parse_trace(text: &str) -> Trace {
    let mut trace = Trace::default();
    for (t_ns, text) in text.lines().filter_map(trace_record) {
        if let Some(rx) = rx_event(t_ns, text) {
            trace.rx.push(rx);
        } else if device_event(text.split(' ').next().unwrap_or_default()).is_some() {
            trace.device.push(DeviceEvent {
                t_ns,
                text: text.trim_end().to_owned(),
            });
        }
    }
    trace
}

/// The events of a QEMU trace file.
pub fn read_trace(path: &Path) -> Result<Trace> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(parse_trace(&String::from_utf8_lossy(&text)))
}

/// The trace times of each report's stream: from its first send to the
/// next stream's; `None`: nothing sent. Trace times are truncated to µs:
/// a write in the same µs as the first send may look earlier than it.
fn trace_spans(reports: &[StreamReport]) -> Vec<Option<std::ops::Range<u64>>> {
    let firsts: Vec<Option<u64>> = reports
        .iter()
        .map(|r| r.sends.first().map(|t| t / 1000 * 1000))
        .collect();
    firsts
        .iter()
        .enumerate()
        .map(|(i, from)| {
            let to = firsts[i + 1..].iter().flatten().next().copied();
            Some((*from)?..to.unwrap_or(u64::MAX))
        })
        .collect()
}

/// Gives each report its device write times ([`attach_device_writes`])
/// and the device events of its span.
pub fn attach_trace(reports: &mut [StreamReport], trace: &Trace) {
    attach_device_writes(reports, &trace.rx);
    let spans = trace_spans(reports);
    for (r, span) in reports.iter_mut().zip(spans) {
        r.device_events = Some(
            trace
                .device
                .iter()
                .filter(|e| span.as_ref().is_some_and(|s| s.contains(&e.t_ns)))
                .cloned()
                .collect(),
        );
    }
}

/// Gives each report the device write time of each data frame: the k-th
/// write after the stream's first send is data frame k (the device writes
/// in arrival order and the guest checks that none is lost, duplicated or
/// reordered). Writes go to one queue; if a frame were written to several
/// (VMDq replication), the busiest queue counts.
pub fn attach_device_writes(reports: &mut [StreamReport], events: &[RxEvent]) {
    let spans = trace_spans(reports);
    for (r, span) in reports.iter_mut().zip(spans) {
        let Some(span) = span else {
            r.device_writes = Some(Vec::new());
            r.device_drops = Some(0);
            continue;
        };
        let window: Vec<&RxEvent> = events.iter().filter(|e| span.contains(&e.t_ns)).collect();
        let mut per_queue: BTreeMap<u32, usize> = BTreeMap::new();
        for e in window.iter().filter(|e| e.written) {
            *per_queue.entry(e.queue).or_default() += 1;
        }
        let queue = per_queue
            .iter()
            .max_by_key(|(q, n)| (**n, std::cmp::Reverse(**q)))
            .map(|(q, _)| *q);
        r.device_writes = Some(
            window
                .iter()
                .filter(|e| e.written && Some(e.queue) == queue)
                .map(|e| e.t_ns)
                .take(r.sends.len())
                .collect(),
        );
        r.device_drops = Some(window.iter().filter(|e| !e.written).count() as u64);
    }
}

/// Name and outcome (detail, or why it failed) of one check.
pub type Check = (String, std::result::Result<String, String>);

/// The adoption that ended a live update window.
struct Adoption {
    t_ns: u64,
    buffered: u64,
    first: Option<u64>,
    last: Option<u64>,
}

/// One live update inside a stream: a freeze and what followed it.
struct Window<'a> {
    freeze: &'a Marker,
    kexec: Option<&'a Marker>,
    userspace: Option<&'a Marker>,
    adopted: Option<Adoption>,
}

/// The live updates of a stream: each freeze with the first kexec, the
/// new userspace after it and the adoption before the next freeze.
fn windows(markers: &[Marker]) -> Vec<Window<'_>> {
    let mut out = Vec::new();
    for (i, freeze) in markers.iter().enumerate() {
        if !matches!(freeze.mark, Mark::Freeze { .. }) {
            continue;
        }
        let rest = &markers[i + 1..];
        let end = rest
            .iter()
            .position(|m| matches!(m.mark, Mark::Freeze { .. } | Mark::Adopted { .. }))
            .unwrap_or(rest.len());
        let adopted = rest.get(end).and_then(|m| match m.mark {
            Mark::Adopted {
                buffered,
                first,
                last,
            } => Some(Adoption {
                t_ns: m.t_ns,
                buffered,
                first,
                last,
            }),
            _ => None,
        });
        let inside = &rest[..end];
        let k = inside
            .iter()
            .position(|m| matches!(m.mark, Mark::Kexec { .. }));
        let userspace = k.and_then(|k| {
            inside[k + 1..]
                .iter()
                .find(|m| matches!(m.mark, Mark::Userspace { .. }))
        });
        out.push(Window {
            freeze,
            kexec: k.map(|k| &inside[k]),
            userspace,
            adopted,
        });
    }
    out
}

/// (index i, gap between times[i] and times[i + 1]) of the longest gap.
fn longest_gap(times: &[u64]) -> Option<(usize, u64)> {
    times
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].saturating_sub(w[0])))
        .max_by_key(|&(i, gap)| (gap, std::cmp::Reverse(i)))
}

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

fn interval_ns(rate: u32) -> u64 {
    1_000_000_000 / u64::from(rate.max(1))
}

impl StreamReport {
    /// Seconds from the start line to `t_ns`.
    fn rel(&self, t_ns: u64) -> f64 {
        (t_ns as i128 - self.start_ns as i128) as f64 / 1e9
    }

    fn field(&self, key: &str) -> Option<u64> {
        self.result.as_ref()?.get(key)?.parse().ok()
    }

    /// Data frames the guest received (all sent, if it did not say).
    fn received(&self) -> usize {
        self.field("received")
            .map_or(self.sends.len(), |n| (n as usize).min(self.sends.len()))
    }

    /// Where frame `seq` is plotted: its device write if traced, else its
    /// send.
    fn frame_time(&self, seq: usize) -> Option<u64> {
        self.device_writes
            .as_ref()
            .and_then(|w| w.get(seq))
            .or_else(|| self.sends.get(seq))
            .copied()
    }
}

/// The name of [`check_undisturbed`]'s check.
const UNDISTURBED: &str = "no PF/VF disturbance across the kexec";

fn check_guest(r: &StreamReport) -> std::result::Result<String, String> {
    let Some(fields) = &r.result else {
        return Err("no `stream: result` line: the guest did not finish the stream".into());
    };
    let host = r.sends.len() as u64;
    let mut wrong = Vec::new();
    match fields.get("run").map(|v| u32::from_str_radix(v, 16)) {
        Some(Ok(id)) if id == r.run_id => {}
        other => wrong.push(format!("run {other:?}, expected {:08x}", r.run_id)),
    }
    for key in ["missing", "dups", "bad", "reordered"] {
        if r.field(key) != Some(0) {
            wrong.push(format!("{key}={}", fields.get(key).map_or("?", |v| v)));
        }
    }
    let (received, sent) = (r.field("received"), r.field("sent"));
    if received != Some(host) || sent != Some(host) {
        wrong.push(format!(
            "received={} sent={} but the host sent {host}",
            fields.get("received").map_or("?", |v| v),
            fields.get("sent").map_or("?", |v| v)
        ));
    }
    let errors = match r.send_errors {
        0 => String::new(),
        n => format!(
            "; {n} host send errors ({})",
            r.first_send_error.as_deref().unwrap_or("?")
        ),
    };
    if wrong.is_empty() {
        Ok(format!(
            "all {host} frames received exactly once, intact and in order{errors}"
        ))
    } else {
        Err(format!("{}{errors}", wrong.join(", ")))
    }
}

fn check_window(r: &StreamReport, w: &Window) -> std::result::Result<String, String> {
    let at = |t_ns: u64| format!("+{:.3} s", r.rel(t_ns));
    let Some(adopted) = &w.adopted else {
        return Err(format!("freeze at {} never adopted", at(w.freeze.t_ns)));
    };
    let (Some(kexec), Some(user)) = (w.kexec, w.userspace) else {
        return Err(format!(
            "no kexec and new userspace line between the freeze at {} and the adoption at {}",
            at(w.freeze.t_ns),
            at(adopted.t_ns)
        ));
    };
    let (Some(first), Some(last), true) = (adopted.first, adopted.last, adopted.buffered > 0)
    else {
        return Err(format!(
            "the ring held no frame at the adoption ({}): the device stopped writing",
            at(adopted.t_ns)
        ));
    };
    // The frames in the ring whose send (or device write) falls between
    // the kexec and the new userspace: neither kernel could have polled.
    let gone = kexec.t_ns..=user.t_ns;
    let in_gone = |times: &[u64]| {
        (first..=last)
            .map_while(|s| times.get(usize::try_from(s).ok()?))
            .filter(|t| gone.contains(t))
            .count()
    };
    let sent_gone = in_gone(&r.sends);
    let written_gone = r.device_writes.as_deref().map(in_gone);
    let no_vmm = w.freeze.t_ns..=adopted.t_ns;
    let sent_no_vmm = r.sends.iter().filter(|t| no_vmm.contains(t)).count();
    let detail = format!(
        "{} frames in the ring at the adoption (seq {first}..={last}); {sent_gone} of them \
         sent between the kexec and the new kernel's userspace ({:.3} s){}; {sent_no_vmm} frames \
         sent between freeze and adoption ({:.3} s)",
        adopted.buffered,
        user.t_ns.saturating_sub(kexec.t_ns) as f64 / 1e9,
        written_gone.map_or(String::new(), |n| format!(
            ", {n} written by the device then"
        )),
        adopted.t_ns.saturating_sub(w.freeze.t_ns) as f64 / 1e9,
    );
    if sent_gone > 0 && written_gone != Some(0) {
        Ok(detail)
    } else {
        Err(format!(
            "no frame the device wrote while the old kernel was gone and the new one booted: {detail}"
        ))
    }
}

/// No [`disturbance`] of the PF or VF between the kexec (the runner's
/// line, before the old kernel's device shutdown) and the adoption, and
/// config writes traced there (the new kernel's enumeration writes
/// some): proof the trace saw them.
fn check_undisturbed(r: &StreamReport, w: &Window) -> std::result::Result<String, String> {
    let at = |t_ns: u64| format!("+{:.3} s", r.rel(t_ns));
    let (Some(kexec), Some(adopted)) = (w.kexec, &w.adopted) else {
        return Err(format!(
            "no kexec and adoption after the freeze at {}",
            at(w.freeze.t_ns)
        ));
    };
    let Some(events) = &r.device_events else {
        return Err("PF and VF events not traced".into());
    };
    let span = kexec.t_ns..=adopted.t_ns;
    let inside: Vec<&DeviceEvent> = events.iter().filter(|e| span.contains(&e.t_ns)).collect();
    let between = format!(
        "between the kexec ({}) and the adoption ({})",
        at(kexec.t_ns),
        at(adopted.t_ns)
    );
    let bad: Vec<String> = inside
        .iter()
        .filter_map(|e| {
            Some(format!(
                "{} {}: {}",
                at(e.t_ns),
                disturbance(&e.text)?,
                e.text
            ))
        })
        .collect();
    let writes = inside
        .iter()
        .filter(|e| e.text.split(' ').next() == Some(TRACE_CFG_WRITE))
        .count();
    if !bad.is_empty() {
        Err(format!(
            "{} events disturbed the PF or VF {between}: {}",
            bad.len(),
            bad.join("; ")
        ))
    } else if writes == 0 {
        Err(format!(
            "no config write traced {between}: {TRACE_CFG_WRITE} is not traced"
        ))
    } else {
        Ok(format!(
            "{writes} config writes traced {between}; no reset or SR-IOV event, none into the \
             PF's SR-IOV capability or clearing bus mastering of {PF_BDF} or {VF_BDF}"
        ))
    }
}

fn check_blackout(r: &StreamReport, writes: &[u64]) -> std::result::Result<String, String> {
    let interval = interval_ns(r.rate);
    let limit = (10 * interval).max(BLACKOUT_FLOOR_NS);
    let send_gap = longest_gap(&r.sends).map_or(0, |(_, g)| g);
    let drops = match r.device_drops {
        Some(n) if n > 0 => format!("; the device dropped {n} frames (ring full)"),
        _ => String::new(),
    };
    let Some((i, gap)) = longest_gap(writes) else {
        return Err(format!(
            "{} device writes traced for {} frames sent{drops}",
            writes.len(),
            r.sends.len()
        ));
    };
    let detail = format!(
        "longest gap between device writes {} at +{:.3} s (after seq {i}); longest gap between \
         sends {}; send interval {}; limit {}{drops}",
        ms(gap),
        r.rel(writes[i]),
        ms(send_gap),
        ms(interval),
        ms(limit)
    );
    if writes.len() < r.sends.len() {
        Err(format!(
            "only {} of {} frames' device writes traced: {detail}",
            writes.len(),
            r.sends.len()
        ))
    } else if gap >= limit {
        Err(format!("DMA blackout: {detail}"))
    } else {
        Ok(detail)
    }
}

fn check_ring(r: &StreamReport) -> std::result::Result<String, String> {
    match (r.field("peak"), r.field("ring")) {
        (Some(peak), Some(ring)) if peak < ring => {
            Ok(format!("at most {peak} of {ring} descriptors waited"))
        }
        (Some(peak), Some(ring)) => Err(format!("{peak} of {ring} descriptors waited: ring full")),
        _ => Err("the guest reported no peak and ring".into()),
    }
}

/// The checks of one stream: the guest received
/// every frame exactly once; each live update left frames in the ring
/// that were sent (and, traced, written) while no kernel ran, and, for
/// [`UNDISTURBED_TESTS`], nothing disturbed the PF or VF; no DMA
/// blackout; the ring never filled.
pub fn check(r: &StreamReport) -> Vec<Check> {
    let mut out = vec![("guest received the stream".to_owned(), check_guest(r))];
    let undisturbed = UNDISTURBED_TESTS.contains(&r.test.as_str());
    let windows = windows(&r.markers);
    for (n, w) in windows.iter().enumerate() {
        out.push((
            format!("live update {}: frames written with no VMM", n + 1),
            check_window(r, w),
        ));
        if undisturbed {
            out.push((
                format!("live update {}: {UNDISTURBED}", n + 1),
                check_undisturbed(r, w),
            ));
        }
    }
    if undisturbed && windows.is_empty() {
        out.push((
            UNDISTURBED.into(),
            Err("no live update (freeze, kexec, adoption) in the stream".into()),
        ));
    }
    if let Some(writes) = &r.device_writes {
        out.push(("no DMA blackout".into(), check_blackout(r, writes)));
    }
    out.push(("ring never full".into(), check_ring(r)));
    out
}

/// A human-readable timeline of the stream, relative to its start line.
pub fn timeline(r: &StreamReport) -> Vec<String> {
    let line = |t: f64, what: String| format!("{t:>+9.3} s  {what}");
    let mut out = vec![line(
        0.0,
        format!(
            "stream starts: run {:08x}, {} frames/s (test {})",
            r.run_id, r.rate, r.test
        ),
    )];
    let opt = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    for m in &r.markers {
        let what = match &m.mark {
            Mark::Freeze { last, head } => format!(
                "freeze (last frame handled: seq {}, ring head {})",
                opt(*last),
                opt(*head)
            ),
            Mark::Kexec { stage } => format!("kexec into stage {stage}"),
            Mark::Userspace { stage } => format!("new kernel's userspace (stage {stage})"),
            Mark::Adopted {
                buffered,
                first,
                last,
            } => format!(
                "VMM re-bound the device: {buffered} frames already in the ring (seq {}..={}, \
                 written while no VMM ran)",
                opt(*first),
                opt(*last)
            ),
            Mark::Stop => format!("stream stops: {} data frames sent", r.sends.len()),
            Mark::Result => "guest result".to_owned(),
        };
        out.push(line(r.rel(m.t_ns), what));
    }
    match &r.result {
        Some(fields) => {
            let f = |k: &str| fields.get(k).map_or("?", |v| v.as_str());
            out.push(format!(
                "frames sent {}, received {}, lost {}, duplicated {}, damaged {}, out of order {}; \
                 ring peak {} of {}",
                r.sends.len(),
                f("received"),
                f("missing"),
                f("dups"),
                f("bad"),
                f("reordered"),
                f("peak"),
                f("ring")
            ));
        }
        None => out.push(format!(
            "frames sent {}; the guest reported no result",
            r.sends.len()
        )),
    }
    let send_gap = longest_gap(&r.sends).map_or(0, |(_, g)| g);
    match r
        .device_writes
        .as_deref()
        .and_then(|w| Some((w, longest_gap(w)?)))
    {
        Some((w, (i, gap))) => out.push(format!(
            "longest gap between device writes: {} at +{:.3} s (send interval {}, longest gap \
             between sends {})",
            ms(gap),
            r.rel(w[i]),
            ms(interval_ns(r.rate)),
            ms(send_gap)
        )),
        None => out.push(format!(
            "device write times not traced (send interval {}, longest gap between sends {})",
            ms(interval_ns(r.rate)),
            ms(send_gap)
        )),
    }
    if r.late_restarts > 0 {
        out.push(format!(
            "the sender fell behind its schedule {} times (host busy)",
            r.late_restarts
        ));
    }
    out
}

/// A round step for about `n` ticks over `range`: 1, 2 or 5 times a
/// power of ten.
fn tick_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * mag >= raw)
        .unwrap_or(10.0);
    step * mag
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Most points plotted: enough to see the stream's shape, few enough for
/// a browser.
const MAX_POINTS: usize = 4000;

/// The stream as an SVG 1.1 document: seq over host time, live update
/// windows shaded.
pub fn svg(r: &StreamReport) -> String {
    const W: f64 = 960.0;
    const H: f64 = 560.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 30.0;
    const TOP: f64 = 80.0;
    const BOTTOM: f64 = 60.0;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let n = r.received();
    let stride = n.div_ceil(MAX_POINTS).max(1);
    let points: Vec<(f64, usize)> = (0..n)
        .step_by(stride)
        .chain(n.checked_sub(1))
        .filter_map(|s| Some((r.rel(r.frame_time(s)?), s)))
        .collect();
    let t_max = points
        .iter()
        .map(|p| p.0)
        .chain(r.markers.iter().map(|m| r.rel(m.t_ns)))
        .fold(0.001f64, f64::max);
    let x_step = tick_step(t_max, 10.0);
    let x_end = (t_max / x_step).ceil() * x_step;
    let y_step = tick_step(n.max(1) as f64, 8.0).max(1.0);
    let y_end = ((n.max(1) as f64) / y_step).ceil() * y_step;
    let x = |t: f64| LEFT + t.clamp(0.0, x_end) / x_end * pw;
    let y = |s: f64| TOP + ph - s / y_end * ph;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#
    );
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let by = if r.device_writes.is_some() {
        "device write time"
    } else {
        "send time (device writes not traced)"
    };
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        xml_escape(&format!(
            "{}: UDP stream through a live update (run {:08x}, {} frames/s)",
            r.test, r.run_id, r.rate
        ))
    );
    // Legend.
    let _ = writeln!(
        o,
        r##"<g font-size="11"><circle cx="{LEFT}" cy="48" r="2" fill="#1f77b4"/><text x="{}" y="52">frame at its {by}</text>"##,
        LEFT + 8.0
    );
    let lx = LEFT + 300.0;
    let _ = writeln!(
        o,
        r##"<rect x="{lx}" y="42" width="14" height="10" fill="#f8c8c8"/><text x="{}" y="52">no VMM (freeze → adopted)</text>"##,
        lx + 20.0
    );
    let lx = lx + 190.0;
    let _ = writeln!(
        o,
        r##"<line x1="{lx}" y1="47" x2="{}" y2="47" stroke="#b22222" stroke-dasharray="4 3"/><text x="{}" y="52">kexec</text>"##,
        lx + 20.0,
        lx + 26.0
    );
    let lx = lx + 80.0;
    let _ = writeln!(
        o,
        r##"<line x1="{lx}" y1="47" x2="{}" y2="47" stroke="#228b22" stroke-dasharray="4 3"/><text x="{}" y="52">new kernel's userspace</text></g>"##,
        lx + 20.0,
        lx + 26.0
    );

    // Live update windows under everything else.
    for w in windows(&r.markers) {
        let Some(adopted) = &w.adopted else { continue };
        let (x0, x1) = (x(r.rel(w.freeze.t_ns)), x(r.rel(adopted.t_ns)));
        let _ = writeln!(
            o,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="#f8c8c8"><title>no VMM (freeze → adopted)</title></rect>"##,
            (x1 - x0).max(1.0)
        );
        if x1 - x0 >= 150.0 {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#8b0000">no VMM (freeze → adopted)</text>"##,
                (x0 + x1) / 2.0,
                TOP + 14.0
            );
        }
    }
    // Grid, ticks and labels.
    let _ = writeln!(o, r##"<g stroke="#e0e0e0">"##);
    let x_ticks = (x_end / x_step).round() as usize;
    for k in 0..=x_ticks {
        let xv = x(k as f64 * x_step);
        let _ = writeln!(
            o,
            r#"<line x1="{xv:.1}" y1="{TOP}" x2="{xv:.1}" y2="{}"/>"#,
            TOP + ph
        );
    }
    let y_ticks = (y_end / y_step).round() as usize;
    for k in 0..=y_ticks {
        let yv = y(k as f64 * y_step);
        let _ = writeln!(
            o,
            r#"<line x1="{LEFT}" y1="{yv:.1}" x2="{}" y2="{yv:.1}"/>"#,
            LEFT + pw
        );
    }
    let _ = writeln!(o, "</g>");
    let _ = writeln!(
        o,
        r#"<g stroke="black" fill="none"><line x1="{LEFT}" y1="{}" x2="{}" y2="{}"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}"/></g>"#,
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph
    );
    let _ = writeln!(o, r#"<g text-anchor="middle">"#);
    for k in 0..=x_ticks {
        let v = k as f64 * x_step;
        let _ = writeln!(
            o,
            r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="black"/><text x="{0:.1}" y="{3}">{4}</text>"#,
            x(v),
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 18.0,
            tick_label(v, x_step)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}">host time since the stream started (s)</text></g>"#,
        LEFT + pw / 2.0,
        H - 16.0
    );
    let _ = writeln!(o, r#"<g text-anchor="end">"#);
    for k in 0..=y_ticks {
        let v = k as f64 * y_step;
        let _ = writeln!(
            o,
            r#"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="black"/><text x="{3}" y="{4:.1}">{5}</text>"#,
            LEFT - 5.0,
            y(v),
            LEFT,
            LEFT - 8.0,
            y(v) + 4.0,
            tick_label(v, y_step)
        );
    }
    let _ = writeln!(o, "</g>");
    let _ = writeln!(
        o,
        r#"<text transform="translate(20 {}) rotate(-90)" text-anchor="middle">seq (data frame number)</text>"#,
        TOP + ph / 2.0
    );

    // The frames.
    let _ = writeln!(o, r##"<g fill="#1f77b4">"##);
    for (t, s) in &points {
        let _ = writeln!(
            o,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5"/>"#,
            x(*t),
            y(*s as f64)
        );
    }
    let _ = writeln!(o, "</g>");

    // Kexecs and new userspaces on top.
    for m in &r.markers {
        let (color, what) = match m.mark {
            Mark::Kexec { stage } => ("#b22222", format!("kexec into stage {stage}")),
            Mark::Userspace { stage } => ("#228b22", format!("userspace of stage {stage}")),
            _ => continue,
        };
        let xv = x(r.rel(m.t_ns));
        let _ = writeln!(
            o,
            r#"<line x1="{xv:.1}" y1="{TOP}" x2="{xv:.1}" y2="{}" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"><title>{what}</title></line>"#,
            TOP + ph
        );
    }
    let _ = writeln!(o, "</svg>");
    o
}

/// Writes [`svg`] to `path`.
pub fn write_svg(r: &StreamReport, path: &Path) -> Result<()> {
    std::fs::write(path, svg(r)).map_err(|e| format!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// Sum of a checksummed region, folded: 0xffff when it verifies.
    fn verify(data: &[u8], acc: u32) -> u16 {
        fold(ones_sum(data, acc))
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        // zlib.crc32(b"The quick brown fox jumps over the lazy dog")
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
    }

    #[test]
    fn frame_layout_and_checksums() {
        for seq in [0u64, 1, 2, 988, 989, 123_456, 1 << 40] {
            let f = stream_frame(0x1234_abcd, seq, KIND_DATA, 0, 0x0102_0304_0506_0708);
            let payload = payload_len(seq, KIND_DATA);
            assert!((36..=1024).contains(&payload), "{payload}");
            assert_eq!(payload, 36 + (seq as u128 * 7919 % 989) as usize);
            assert_eq!(f.len(), 14 + 20 + 8 + payload);
            assert_eq!(f[..6], [0xff; 6]);
            assert_eq!(f[6..12], SRC_MAC);
            assert_eq!(f[12..14], [0x08, 0x00]);
            let ip = &f[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                28 + payload
            );
            assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), seq as u16);
            assert_eq!(ip[6..10], [0x40, 0, 64, 17]);
            assert_eq!(ip[12..20], [10, 0, 2, 2, 10, 0, 2, 15]);
            assert_eq!(verify(ip, 0), 0xffff, "IPv4 header checksum");
            let udp = &f[34..];
            assert_eq!(udp[..4], [0x13, 0x88, 0x13, 0x89]);
            assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
            assert_ne!(udp[6..8], [0, 0]);
            let pseudo = ones_sum(&ip[12..20], 17 + udp.len() as u32);
            assert_eq!(verify(udp, pseudo), 0xffff, "UDP checksum");
            let p = &udp[8..];
            assert_eq!(p[..4], 0x4d52_5453u32.to_le_bytes());
            assert_eq!(p[4..8], 0x1234_abcdu32.to_le_bytes());
            assert_eq!(p[8..16], seq.to_le_bytes());
            assert_eq!(p[16..24], 0x0102_0304_0506_0708u64.to_le_bytes());
            assert_eq!(p[24..32], [0; 8]);
            let body = p.len() - 4;
            for (i, &b) in p[32..body].iter().enumerate() {
                assert_eq!(b, seq.wrapping_mul(31).wrapping_add(i as u64) as u8);
            }
            assert_eq!(p[body..], crc32(&p[..body]).to_le_bytes());
        }
        let end = stream_frame(7, END_SEQ, KIND_END, 42, 1);
        assert_eq!(end.len(), 14 + 20 + 8 + 36);
        assert_eq!(end[18..20], [0xff, 0xff]);
        let p = &end[42..];
        assert_eq!(p[8..16], [0xff; 8]);
        assert_eq!(p[24..32], [1, 0, 0, 0, 42, 0, 0, 0]);
    }

    #[test]
    fn guest_parser_accepts_the_frames() {
        use gmfs_guest::stream::parse;
        for seq in 0..2000 {
            let f = parse(&stream_frame(9, seq, KIND_DATA, 0, seq * 1000)).unwrap();
            assert_eq!(
                (f.run_id, f.seq, f.kind, f.t_send_ns),
                (9, seq, KIND_DATA, seq * 1000)
            );
        }
        let f = parse(&stream_frame(9, END_SEQ, KIND_END, 5, 1)).unwrap();
        assert_eq!((f.seq, f.kind, f.count), (END_SEQ, KIND_END, 5));
        let mut bad = stream_frame(9, 3, KIND_DATA, 0, 1);
        let last = bad.len() - 10;
        bad[last] ^= 1;
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn events() {
        assert_eq!(
            parse_event("stream: start run=0000abcd rate=500"),
            Some(Event::StreamStart {
                run_id: 0xabcd,
                rate: 500
            })
        );
        assert_eq!(parse_event("stream: start run=xyz rate=500"), None);
        assert_eq!(parse_event("stream: start run=1 rate=0"), None);
        assert_eq!(parse_event("stream: stop"), Some(Event::StreamStop));
        let Some(Event::StreamResult(r)) = parse_event(
            "stream: result run=0000abcd received=10 sent=10 missing=0 dups=0 bad=0 reordered=0 peak=3 ring=32768 rnbc=0 mpc=0",
        ) else {
            panic!()
        };
        assert_eq!(r["received"], "10");
        assert_eq!(r["mpc"], "0");
        assert_eq!(
            parse_event("gtest: start vfio_lu_stream stage 2"),
            Some(Event::TestStart {
                test: "vfio_lu_stream".into(),
                stage: 2
            })
        );
        assert_eq!(
            parse_event("gtest: vfio_lu_stream stage 1 done, kexec into stage 2"),
            Some(Event::Mark(Mark::Kexec { stage: 2 }))
        );
        assert_eq!(
            parse_event("lu: freeze last=1559 head=1560"),
            Some(Event::Mark(Mark::Freeze {
                last: Some(1559),
                head: Some(1560)
            }))
        );
        assert_eq!(
            parse_event(
                "lu: adopted buffered=0 first=18446744073709551615 last=18446744073709551615"
            ),
            Some(Event::Mark(Mark::Adopted {
                buffered: 0,
                first: None,
                last: None
            }))
        );
        assert_eq!(parse_event("stage 1: kexec refused with MSI-X on"), None);
    }

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000_000_000;

    /// A 20 s stream at 500 frames/s with one live update: freeze at 3 s,
    /// kexec at 3.2 s, userspace at 9.8 s, adopted at 11 s.
    fn synthetic() -> StreamReport {
        let sends: Vec<u64> = (0..10_000).map(|k| T0 + 1_000_000 + k * 2 * MS).collect();
        let mark = |ms: u64, mark: Mark| Marker {
            t_ns: T0 + ms * MS,
            mark,
        };
        let result = key_values(
            "run=0000abcd received=10000 sent=10000 missing=0 dups=0 bad=0 reordered=0 peak=4500 ring=32768",
        );
        StreamReport {
            test: "vfio_lu_stream".into(),
            run_id: 0xabcd,
            rate: 500,
            start_ns: T0,
            sends,
            end_frames: 3,
            markers: vec![
                mark(
                    3000,
                    Mark::Freeze {
                        last: Some(1499),
                        head: Some(1500),
                    },
                ),
                mark(3200, Mark::Kexec { stage: 2 }),
                mark(9800, Mark::Userspace { stage: 2 }),
                mark(
                    11_000,
                    Mark::Adopted {
                        buffered: 3999,
                        first: Some(1500),
                        last: Some(5498),
                    },
                ),
                mark(20_050, Mark::Stop),
                mark(20_300, Mark::Result),
            ],
            result: Some(result),
            ..StreamReport::default()
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| c.1.is_err())
            .map(|c| c.0.as_str())
            .collect()
    }

    #[test]
    fn a_good_stream_passes() {
        let mut r = synthetic();
        let checks = check(&r);
        assert_eq!(checks.len(), 3, "{checks:?}");
        assert!(failed(&checks).is_empty(), "{checks:?}");
        let window = checks[1].1.as_ref().unwrap();
        // Frames 1550..=4849 were sent between 3.2 s and 9.8 s.
        assert!(window.contains("3300 of them sent between"), "{window}");
        assert!(
            window.contains("4000 frames sent between freeze"),
            "{window}"
        );

        // Device writes 0.3 ms after each send; a 150 ms stall mid-way.
        let mut writes: Vec<u64> = r.sends.iter().map(|t| t + 300_000).collect();
        for w in &mut writes[3000..] {
            *w += 150 * MS;
        }
        r.device_writes = Some(writes.clone());
        let checks = check(&r);
        assert!(failed(&checks).is_empty(), "{checks:?}");
        let blackout = checks[2].1.as_ref().unwrap();
        assert!(blackout.contains("writes 152.0 ms"), "{blackout}");
        assert!(blackout.contains("after seq 2999"), "{blackout}");

        // 250 ms is a blackout (limit max(20 ms, 200 ms)).
        for w in &mut writes[3000..] {
            *w += 100 * MS;
        }
        r.device_writes = Some(writes);
        assert_eq!(failed(&check(&r)), ["no DMA blackout"]);
    }

    #[test]
    fn failures_are_reported() {
        let mut r = synthetic();
        r.result
            .as_mut()
            .unwrap()
            .insert("missing".into(), "2".into());
        r.result
            .as_mut()
            .unwrap()
            .insert("peak".into(), "32768".into());
        assert_eq!(
            failed(&check(&r)),
            ["guest received the stream", "ring never full"]
        );

        // Frames in the ring, but all sent before the kexec.
        let mut r = synthetic();
        r.markers[3].mark = Mark::Adopted {
            buffered: 50,
            first: Some(1500),
            last: Some(1549),
        };
        assert_eq!(
            failed(&check(&r)),
            ["live update 1: frames written with no VMM"]
        );
        // Sent in time, but the device only wrote them after the new
        // userspace started.
        let mut r = synthetic();
        r.device_writes = Some(
            r.sends
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    if k < 1500 {
                        *t
                    } else {
                        t.max(&(T0 + 9900 * MS)) + 1
                    }
                })
                .collect(),
        );
        let checks = check(&r);
        let f = failed(&checks);
        assert!(
            f.contains(&"live update 1: frames written with no VMM"),
            "{f:?}"
        );

        // No result, a freeze never adopted.
        let mut r = synthetic();
        r.result = None;
        r.markers.truncate(3);
        let checks = check(&r);
        assert_eq!(checks.len(), 3);
        assert!(checks.iter().all(|c| c.1.is_err()), "{checks:?}");
    }

    #[test]
    fn twenty_live_updates_in_one_stream() {
        let mut r = synthetic();
        r.markers.clear();
        for k in 0..20u64 {
            let base = T0 + k * 1000 * MS;
            let first = k * 500 + 100;
            let mark = |at: u64, mark: Mark| Marker {
                t_ns: base + at * MS,
                mark,
            };
            r.markers.extend([
                mark(
                    100,
                    Mark::Freeze {
                        last: Some(first - 1),
                        head: Some(0),
                    },
                ),
                mark(
                    150,
                    Mark::Kexec {
                        stage: k as u32 + 2,
                    },
                ),
                mark(
                    600,
                    Mark::Userspace {
                        stage: k as u32 + 2,
                    },
                ),
                mark(
                    700,
                    Mark::Adopted {
                        buffered: 300,
                        first: Some(first),
                        last: Some(first + 299),
                    },
                ),
            ]);
        }
        let checks = check(&r);
        assert_eq!(checks.len(), 22);
        assert!(failed(&checks).is_empty(), "{checks:?}");
        let t = timeline(&r);
        assert_eq!(
            t.iter().filter(|l| l.contains("kexec into stage")).count(),
            20
        );
    }

    #[test]
    fn timeline_reads_well() {
        let mut r = synthetic();
        r.device_writes = Some(r.sends.iter().map(|t| t + 300_000).collect());
        let t = timeline(&r);
        assert_eq!(
            t[0],
            "   +0.000 s  stream starts: run 0000abcd, 500 frames/s (test vfio_lu_stream)"
        );
        assert_eq!(
            t[1],
            "   +3.000 s  freeze (last frame handled: seq 1499, ring head 1500)"
        );
        assert_eq!(t[2], "   +3.200 s  kexec into stage 2");
        assert_eq!(t[3], "   +9.800 s  new kernel's userspace (stage 2)");
        assert!(t[4].starts_with("  +11.000 s  VMM re-bound the device: 3999 frames"));
        assert_eq!(t[5], "  +20.050 s  stream stops: 10000 data frames sent");
        assert!(t[7].starts_with("frames sent 10000, received 10000, lost 0,"));
        assert_eq!(
            t[8],
            "longest gap between device writes: 2.0 ms at +0.001 s (send interval 2.0 ms, longest gap between sends 2.0 ms)"
        );
    }

    /// Tags open and close in order (a minimal XML well-formedness check).
    fn balanced(xml: &str) -> bool {
        let mut stack = Vec::new();
        for tag in xml.split('<').skip(1) {
            let Some((inner, _)) = tag.split_once('>') else {
                return false;
            };
            if inner.starts_with('?') {
                continue;
            }
            if let Some(name) = inner.strip_prefix('/') {
                if stack.pop() != Some(name.trim().to_owned()) {
                    return false;
                }
            } else if !inner.ends_with('/') {
                stack.push(inner.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
        stack.is_empty()
    }

    #[test]
    fn svg_is_well_formed() {
        let mut r = synthetic();
        r.test = "a<b>&c".into();
        let doc = svg(&r);
        assert!(doc.starts_with("<?xml"));
        assert!(balanced(&doc), "{doc}");
        assert!(doc.contains("a&lt;b&gt;&amp;c"));
        assert!(!doc.contains("NaN") && !doc.contains("inf"));
        let circles = doc.matches("<circle").count();
        assert!((2000..=MAX_POINTS + 2).contains(&circles), "{circles}");
        assert_eq!(doc.matches("stroke-dasharray=\"6 4\"").count(), 2);
        assert!(doc.contains("no VMM (freeze → adopted)</text>"));
        // Empty stream.
        let empty = StreamReport::default();
        assert!(balanced(&svg(&empty)));
    }

    /// The receive event of one trace line.
    fn parse_trace_line(line: &str) -> Option<RxEvent> {
        let (t_ns, text) = trace_record(line)?;
        rx_event(t_ns, text)
    }

    #[test]
    fn trace_lines() {
        let l = "4242@1732600000.123456:e1000e_rx_written_to_guest Received packet written to guest (queue 0)";
        assert_eq!(
            parse_trace_line(l),
            Some(RxEvent {
                t_ns: 1_732_600_000_123_456_000,
                queue: 0,
                written: true
            })
        );
        let l = "17@5.000001:e1000e_rx_not_written_to_guest Received packet NOT written to guest (queue 3)";
        assert_eq!(
            parse_trace_line(l),
            Some(RxEvent {
                t_ns: 5_000_001_000,
                queue: 3,
                written: false
            })
        );
        // Later QEMUs: ISO 8601 UTC prefix.
        let l = "2025-08-20T06:27:00.5Z (123) e1000e_rx_written_to_guest Received packet written to guest (queue 1)";
        assert_eq!(parse_trace_line(l).unwrap().t_ns, 1_755_671_220_500_000_000);
        assert_eq!(iso8601_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            iso8601_ns("2000-03-01T00:00:01Z"),
            Some(951_868_801_000_000_000)
        );
        assert_eq!(parse_trace_line("1@2.3:e1000e_rx_written_to_guest_x"), None);
        assert_eq!(parse_trace_line("qemu: something else"), None);
    }

    #[test]
    fn device_writes_map_to_seqs() {
        let mut a = synthetic();
        a.sends.truncate(3);
        let mut b = a.clone();
        b.sends = vec![T0 + 100 * MS + 500, T0 + 102 * MS];
        let ev = |t_ns, queue, written| RxEvent {
            t_ns,
            queue,
            written,
        };
        let events = [
            ev(T0, 0, true), // before the stream
            ev(a.sends[0] + 1000, 0, true),
            ev(a.sends[1] + 1000, 0, true),
            ev(a.sends[2] + 1000, 0, true),
            ev(a.sends[2] + 2000, 0, true), // an END frame
            ev(T0 + 100 * MS, 0, true),     // same µs as b's first send
            ev(T0 + 101 * MS, 1, true),     // another queue
            ev(T0 + 102 * MS + 7, 0, false),
            ev(T0 + 103 * MS, 0, true),
        ];
        let mut reports = [a.clone(), b];
        attach_device_writes(&mut reports, &events);
        assert_eq!(
            reports[0].device_writes.as_deref(),
            Some(&[events[1].t_ns, events[2].t_ns, events[3].t_ns][..])
        );
        assert_eq!(
            reports[1].device_writes.as_deref(),
            Some(&[T0 + 100 * MS, T0 + 103 * MS][..])
        );
        assert_eq!(reports[1].device_drops, Some(1));
    }

    #[test]
    fn device_trace_lines() {
        let trace = parse_trace(
            "4242@5.000001:e1000e_rx_written_to_guest Received packet written to guest (queue 0)\n\
             4242@5.000002:pci_cfg_write igb 00:02.0 @0x4 <- 0x6\n\
             4242@5.5:igb_core_vf_reset VF0\n\
             4242@6.000003:sriov_unregister_vfs igb 02:0: Unregistering vf devs\n\
             4242@6.000004:e1000e_cb_qdev_reset_hold E1000E qdev reset hold\n\
             4242@6.000005:igb_write_config igb: 0x4 <- 0x6\n\
             qemu-system-x86_64: warning: something\n\
             4242@6.000006:pci_cfg_write_x igb 00:02.0 @0x4 <- 0x6\n\
             2025-08-20T06:27:00.5Z (123) pci_cfg_write ICH9 SMB 00:1f.3 @0x4 <- 0x0\n",
        );
        assert_eq!(trace.rx.len(), 1);
        let ev = |t_ns, text: &str| DeviceEvent {
            t_ns,
            text: text.into(),
        };
        assert_eq!(
            trace.device,
            [
                ev(5_000_002_000, "pci_cfg_write igb 00:02.0 @0x4 <- 0x6"),
                ev(5_500_000_000, "igb_core_vf_reset VF0"),
                ev(
                    6_000_003_000,
                    "sriov_unregister_vfs igb 02:0: Unregistering vf devs"
                ),
                ev(
                    6_000_004_000,
                    "e1000e_cb_qdev_reset_hold E1000E qdev reset hold"
                ),
                ev(
                    1_755_671_220_500_000_000,
                    "pci_cfg_write ICH9 SMB 00:1f.3 @0x4 <- 0x0"
                ),
            ]
        );
    }

    #[test]
    fn disturbances() {
        let harmless = [
            // Bus mastering kept: enables, an INTx toggle, a dword
            // write with the status register.
            "pci_cfg_write igb 00:02.0 @0x4 <- 0x6",
            "pci_cfg_write igb 00:02.0 @0x4 <- 0x406",
            "pci_cfg_write igbvf 00:12.0 @0x4 <- 0x100006",
            // Other functions, other registers, around the capability.
            "pci_cfg_write igb 00:03.0 @0x4 <- 0x0",
            "pci_cfg_write igbvf 00:13.0 @0x4 <- 0x0",
            "pci_cfg_write ICH9 SMB 00:1f.3 @0x4 <- 0x0",
            "pci_cfg_write igb 00:02.0 @0x10 <- 0xffffffff",
            "pci_cfg_write igb 00:02.0 @0x15c <- 0x0",
            "pci_cfg_write igb 00:02.0 @0x1a0 <- 0x0",
            "pci_cfg_write igbvf 00:12.0 @0x168 <- 0x0",
            "pci_cfg_write igb 00:02.0 @0x5 <- 0x0",
            "e1000e_rx_written_to_guest Received packet written to guest (queue 0)",
        ];
        for t in harmless {
            assert_eq!(disturbance(t), None, "{t}");
        }
        let bad = [
            ("igb_core_vf_reset VF0", "VF reset"),
            (
                "sriov_register_vfs igb 02:0: creating 1 vf devs",
                "SR-IOV state change",
            ),
            (
                "sriov_config_write igb 02:0: sriov offset 0x168 val 0x0 len 2",
                "SR-IOV state change",
            ),
            (
                "e1000e_cb_qdev_reset_hold E1000E qdev reset hold",
                "PF reset",
            ),
            (
                "e1000e_core_ctrl_sw_reset Doing SW reset",
                "PF software reset (CTRL.RST)",
            ),
            (
                "pci_cfg_write igb 00:02.0 @0x160 <- 0x0",
                "write into the PF's SR-IOV capability",
            ),
            (
                "pci_cfg_write igb 00:02.0 @0x168 <- 0x19",
                "write into the PF's SR-IOV capability",
            ),
            (
                "pci_cfg_write igb 00:02.0 @0x19f <- 0x0",
                "write into the PF's SR-IOV capability",
            ),
            (
                "pci_cfg_write igb 00:02.0 @0x4 <- 0x2",
                "bus mastering cleared",
            ),
            (
                "pci_cfg_write igb 00:02.0 @0x4 <- 0x100402",
                "bus mastering cleared",
            ),
            (
                "pci_cfg_write igbvf 00:12.0 @0x4 <- 0x0",
                "bus mastering cleared",
            ),
            (
                "pci_cfg_write igb 00:02.0 @4 <- 6",
                "config write not understood",
            ),
        ];
        for (t, why) in bad {
            assert_eq!(disturbance(t), Some(why), "{t}");
        }
    }

    /// [`synthetic`] as the SR-IOV test, with config writes before the
    /// freeze, between freeze and kexec, inside the window and after
    /// the adoption, and the resets and SR-IOV events of its setup and
    /// teardown outside the window.
    fn synthetic_vf() -> StreamReport {
        let ev = |ms: u64, text: &str| DeviceEvent {
            t_ns: T0 + ms * MS,
            text: text.into(),
        };
        StreamReport {
            test: "vfio_lu_stream_vf".into(),
            device_events: Some(vec![
                ev(500, "e1000e_core_ctrl_sw_reset Doing SW reset"),
                ev(600, "sriov_register_vfs igb 02:0: creating 1 vf devs"),
                ev(700, "pci_cfg_write igbvf 00:12.0 @0x4 <- 0x0"),
                ev(3100, "pci_cfg_write igb 00:02.0 @0x4 <- 0x2"),
                ev(5000, "pci_cfg_write mch 00:00.0 @0x60 <- 0xb0000001"),
                ev(5100, "pci_cfg_write igbvf 00:12.0 @0x4 <- 0x406"),
                ev(5200, "pci_cfg_write igbvf 00:12.0 @0x4 <- 0x6"),
                ev(
                    21_000,
                    "sriov_unregister_vfs igb 02:0: Unregistering vf devs",
                ),
                ev(21_001, "igb_core_vf_reset VF0"),
            ]),
            ..synthetic()
        }
    }

    #[test]
    fn undisturbed_pf_and_vf() {
        const NAME: &str = "live update 1: no PF/VF disturbance across the kexec";
        let r = synthetic_vf();
        let checks = check(&r);
        assert_eq!(checks.len(), 4, "{checks:?}");
        assert!(failed(&checks).is_empty(), "{checks:?}");
        assert_eq!(checks[2].0, NAME);
        let ok = checks[2].1.as_ref().unwrap();
        assert!(
            ok.starts_with(
                "3 config writes traced between the kexec (+3.200 s) and the adoption (+11.000 s)"
            ),
            "{ok}"
        );

        // Each offending event inside the window is reported.
        let mut r = synthetic_vf();
        let events = r.device_events.as_mut().unwrap();
        for (ms, text) in [
            (3200, "pci_cfg_write igb 00:02.0 @0x4 <- 0x2"),
            (6000, "pci_cfg_write igb 00:02.0 @0x168 <- 0x0"),
            (
                6001,
                "sriov_config_write igb 02:0: sriov offset 0x168 val 0x0 len 2",
            ),
            (6002, "sriov_unregister_vfs igb 02:0: Unregistering vf devs"),
            (6003, "igb_core_vf_reset VF0"),
            (7000, "pci_cfg_write igbvf 00:12.0 @0x4 <- 0x400"),
            (8000, "e1000e_cb_qdev_reset_hold E1000E qdev reset hold"),
            (11_000, "e1000e_core_ctrl_sw_reset Doing SW reset"),
        ] {
            events.push(DeviceEvent {
                t_ns: T0 + ms * MS,
                text: text.into(),
            });
        }
        let checks = check(&r);
        assert_eq!(failed(&checks), [NAME]);
        let why = checks[2].1.as_ref().unwrap_err();
        assert!(
            why.starts_with("8 events disturbed the PF or VF between the kexec (+3.200 s)"),
            "{why}"
        );
        for line in [
            "+3.200 s bus mastering cleared: pci_cfg_write igb 00:02.0 @0x4 <- 0x2",
            "+6.000 s write into the PF's SR-IOV capability: pci_cfg_write igb 00:02.0 @0x168 <- 0x0",
            "+6.001 s SR-IOV state change: sriov_config_write",
            "+6.002 s SR-IOV state change: sriov_unregister_vfs",
            "+6.003 s VF reset: igb_core_vf_reset VF0",
            "+7.000 s bus mastering cleared: pci_cfg_write igbvf 00:12.0 @0x4 <- 0x400",
            "+8.000 s PF reset: e1000e_cb_qdev_reset_hold",
            "+11.000 s PF software reset (CTRL.RST): e1000e_core_ctrl_sw_reset Doing SW reset",
        ] {
            assert!(why.contains(line), "{line} in {why}");
        }

        // Not traced, or config writes missing from the trace.
        let mut r = synthetic_vf();
        r.device_events = None;
        assert_eq!(failed(&check(&r)), [NAME]);
        r.device_events = Some(Vec::new());
        let checks = check(&r);
        assert!(checks[2]
            .1
            .as_ref()
            .is_err_and(|e| e.starts_with("no config write traced")));

        // A stream without a live update, or one never adopted.
        let mut r = synthetic_vf();
        r.markers.retain(|m| !matches!(m.mark, Mark::Freeze { .. }));
        assert_eq!(
            failed(&check(&r)),
            ["no PF/VF disturbance across the kexec"]
        );
        let mut r = synthetic_vf();
        r.markers.remove(3);
        assert!(failed(&check(&r)).contains(&NAME));

        // Other stream tests do not get the check.
        let mut r = synthetic_vf();
        r.test = "vfio_lu_stream".into();
        r.device_events = None;
        let checks = check(&r);
        assert_eq!(checks.len(), 3);
        assert!(failed(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn device_events_follow_their_stream() {
        let mut a = synthetic();
        a.sends.truncate(3);
        let mut b = a.clone();
        b.sends = vec![T0 + 100 * MS + 500];
        let mut c = a.clone();
        c.sends.clear();
        let ev = |t_ns| DeviceEvent {
            t_ns,
            text: "igb_core_vf_reset VF0".into(),
        };
        let trace = Trace {
            rx: Vec::new(),
            device: vec![ev(T0), ev(a.sends[0]), ev(T0 + 100 * MS), ev(T0 + 200 * MS)],
        };
        let mut reports = [a, b, c];
        attach_trace(&mut reports, &trace);
        assert_eq!(
            reports
                .each_ref()
                .map(|r| r.device_events.as_ref().unwrap().len()),
            [1, 2, 0]
        );
        assert_eq!(reports[1].device_writes.as_deref(), Some(&[][..]));
    }

    #[test]
    fn stream_names_known_tests() {
        for t in STREAM_TESTS.iter().chain(UNDISTURBED_TESTS) {
            assert!(
                gmfs_guest::tests::CATALOG.iter().any(|c| c.name == *t),
                "{t}"
            );
        }
    }

    /// Receives frames sent to `sock` until an END frame or 5 s.
    fn receive_until_end(sock: &UdpSocket) -> Vec<gmfs_guest::stream::Frame> {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut frames = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf) {
            let f = gmfs_guest::stream::parse(&buf[..n]).unwrap();
            frames.push(f);
            if f.kind == KIND_END {
                break;
            }
        }
        frames
    }

    #[test]
    fn monitor_streams_over_udp() {
        let qemu = UdpSocket::bind("127.0.0.1:0").unwrap();
        let net = NetBackend {
            host: UdpSocket::bind("127.0.0.1:0").unwrap(),
            qemu_port: qemu.local_addr().unwrap().port(),
        };
        let mut mon = Monitor::new(&net).unwrap();
        let t = realtime_ns();
        mon.line(t, "# gtest: start vfio_lu_stream stage 1");
        mon.line(t, "# stream: start run=0000abcd rate=1000\r");
        std::thread::sleep(Duration::from_millis(60));
        mon.line(realtime_ns(), "# lu: freeze last=5 head=6");
        mon.line(realtime_ns(), "# stream: stop[   12.345678] printk");
        let frames = receive_until_end(&qemu);
        let end = frames.last().unwrap();
        assert_eq!(end.kind, KIND_END);
        let data = &frames[..frames.len() - 1];
        assert!(data.len() >= 10, "{}", data.len());
        assert_eq!(end.count as usize, data.len());
        assert!(data.iter().enumerate().all(|(k, f)| f.seq == k as u64));
        // Paced: no burst beyond the schedule.
        let span = (data.last().unwrap().t_send_ns - data[0].t_send_ns) / 1_000_000;
        assert!(
            data.len() as u64 <= span + 1 + MAX_CATCH_UP,
            "{} in {span} ms",
            data.len()
        );
        mon.line(
            realtime_ns(),
            &format!("# stream: result run=0000abcd received={0} sent={0} missing=0 dups=0 bad=0 reordered=0 peak=1 ring=8", data.len()),
        );
        // A second stream, still running when the VM ends.
        mon.line(realtime_ns(), "# stream: start run=00000002 rate=200");
        let reports = mon.finish();
        assert_eq!(reports.len(), 2);
        let r = &reports[0];
        assert_eq!(
            (r.test.as_str(), r.run_id, r.rate),
            ("vfio_lu_stream", 0xabcd, 1000)
        );
        assert_eq!(r.sends.len(), data.len());
        assert!(r.end_frames >= 1);
        assert_eq!(
            r.markers.iter().map(|m| m.mark.clone()).collect::<Vec<_>>(),
            [
                Mark::Freeze {
                    last: Some(5),
                    head: Some(6)
                },
                Mark::Stop,
                Mark::Result
            ]
        );
        assert_eq!(
            check_guest(r),
            Ok(format!(
                "all {} frames received exactly once, intact and in order",
                data.len()
            ))
        );
        assert_eq!(reports[1].run_id, 2);
        assert!(reports[1].result.is_none());
    }
}
