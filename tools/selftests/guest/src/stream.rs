// SPDX-License-Identifier: GPL-2.0-only
//! The frames of the harness's UDP stream (`xtask/src/stream.rs`, which
//! has the authoritative description): Ethernet/IPv4/UDP, payload
//! `magic, run_id, seq, t_send_ns, kind, count, pattern, crc32`. Here:
//! parsing with every checksum verified, and the accounting of a stream
//! that must arrive exactly once and in order.

pub const MAGIC: u32 = 0x4d52_5453;
pub const KIND_DATA: u32 = 0;
pub const KIND_END: u32 = 1;
const PAYLOAD_AT: usize = 14 + 20 + 8;
const HEADER: usize = 32;

/// One verified frame of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub run_id: u32,
    pub seq: u64,
    pub t_send_ns: u64,
    pub kind: u32,
    pub count: u32,
}

static CRC_TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();

/// CRC-32 (IEEE 802.3, as zlib's crc32).
pub fn crc32(data: &[u8]) -> u32 {
    let table = CRC_TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses and verifies one frame: Ethernet type, IPv4 header checksum,
/// UDP checksum, payload magic, CRC and pattern. Err says what is wrong.
pub fn parse(f: &[u8]) -> Result<Frame, String> {
    if f.len() < PAYLOAD_AT + HEADER + 4 {
        return Err(format!("{} bytes: too short", f.len()));
    }
    if f[12..14] != [0x08, 0x00] {
        return Err("not IPv4".into());
    }
    let ip = &f[14..34];
    if ip[0] != 0x45 || ip[9] != 17 {
        return Err("not IPv4/UDP without options".into());
    }
    if fold(sum16(ip, 0)) != 0xffff {
        return Err("bad IPv4 header checksum".into());
    }
    let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip_len < 28 || 14 + ip_len > f.len() {
        return Err(format!("IPv4 length {ip_len} of a {}-byte frame", f.len()));
    }
    let udp = &f[34..14 + ip_len];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len != udp.len() {
        return Err(format!("UDP length {udp_len}, IPv4 says {}", udp.len()));
    }
    // Pseudo-header: source, destination, protocol, UDP length.
    let mut acc = sum16(&ip[12..20], 17 + udp_len as u32);
    acc = sum16(udp, acc);
    if fold(acc) != 0xffff {
        return Err("bad UDP checksum".into());
    }
    let p = &udp[8..];
    if p.len() < HEADER + 4 {
        return Err("payload too short".into());
    }
    if le32(p, 0) != MAGIC {
        return Err("bad magic".into());
    }
    let body = p.len() - 4;
    if crc32(&p[..body]) != le32(p, body) {
        return Err("bad payload CRC".into());
    }
    let frame = Frame {
        run_id: le32(p, 4),
        seq: le64(p, 8),
        t_send_ns: le64(p, 16),
        kind: le32(p, 24),
        count: le32(p, 28),
    };
    for (i, &b) in p[HEADER..body].iter().enumerate() {
        if b != frame.seq.wrapping_mul(31).wrapping_add(i as u64) as u8 {
            return Err(format!("seq {}: pattern byte {i} wrong", frame.seq));
        }
    }
    Ok(frame)
}

/// The accounting of one stream, which must arrive exactly once, intact
/// and in order. Kept in a guestmemfs control page across a live update,
/// hence plain integers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Tally {
    pub run_id: u32,
    pub end_count: u32,
    /// The next data seq expected (= data frames received in order).
    pub next: u64,
    pub dups: u64,
    pub bad: u64,
    /// Frames that arrived after a gap (frames were lost before them).
    pub reordered: u64,
    /// Most completed descriptors found waiting in one poll.
    pub peak: u64,
    /// Intact frames of an earlier stream (still queued in QEMU or the
    /// host's socket when this one started): not ours, not errors.
    pub stale: u64,
    /// Data frames accepted (in order, or first after a gap).
    pub got: u64,
}

impl Tally {
    pub fn new(run_id: u32) -> Tally {
        Tally {
            run_id,
            ..Tally::default()
        }
    }

    /// Accounts one received frame (`None`: larger than a buffer).
    pub fn account(&mut self, frame: Option<&[u8]>) {
        let Some(bytes) = frame else {
            self.bad += 1;
            return;
        };
        match parse(bytes) {
            Err(_) => self.bad += 1,
            Ok(f) if f.run_id != self.run_id => self.stale += 1,
            Ok(f) if f.kind == KIND_END => self.end_count = f.count.max(1),
            Ok(f) if f.kind != KIND_DATA => self.bad += 1,
            Ok(f) if f.seq == self.next => {
                self.next += 1;
                self.got += 1;
            }
            Ok(f) if f.seq < self.next => self.dups += 1,
            Ok(f) => {
                self.reordered += 1;
                self.got += 1;
                self.next = f.seq + 1;
            }
        }
    }

    /// True once the END frame arrived.
    pub fn ended(&self) -> bool {
        self.end_count != 0
    }

    /// The result line's fields; `ring` is the ring's size.
    pub fn result(&self, ring: usize) -> String {
        let sent = u64::from(self.end_count);
        format!(
            "run={:08x} received={} sent={sent} missing={} dups={} bad={} reordered={} peak={} ring={ring} stale={}",
            self.run_id,
            self.got,
            sent.saturating_sub(self.got),
            self.dups,
            self.bad,
            self.reordered,
            self.peak,
            self.stale
        )
    }

    /// Why the stream is not perfect, if it is not.
    pub fn fault(&self) -> Option<String> {
        let sent = u64::from(self.end_count);
        (!self.ended()
            || self.got != sent
            || self.next != sent
            || self.dups != 0
            || self.bad != 0
            || self.reordered != 0)
            .then(|| format!("stream not received exactly once: {}", self.result(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn tally_counts_gaps_and_dups() {
        let mut t = Tally::new(7);
        t.account(None);
        assert_eq!(t.bad, 1);
        assert!(t.fault().is_some());
    }
}
