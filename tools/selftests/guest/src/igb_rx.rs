// SPDX-License-Identifier: GPL-2.0-only
//! A polling receiver for QEMU's igb: one RX queue of advanced one-buffer
//! descriptors whose ring and buffers live in memory the caller DMA-maps
//! (a guestmemfs file), frames from the wire (the harness's UDP stream,
//! `xtask/src/stream.rs`). Unlike [`crate::igb::Igb`] it can be *adopted*:
//! after a live update it continues from the ring's software head without
//! touching the device's configuration, and it never resets the device on
//! drop (a device handed over running must keep running).
//!
//! The queue can also be a VF's (QEMU's igbvf, SR-IOV): the VF's BAR 0
//! maps queue 0 at the PF's offsets, but not the port's registers (RCTL,
//! PHY, drop counters): those are read through the PF's BAR 0, and the PF
//! brings the port up ([`reset_port`]).

use crate::igb::{
    reset, vf_reset, wait_link, write_phy, CTRL, QUEUE_ENABLE, RCTL, RDBAH, RDBAL, RDH, RDLEN, RDT,
    RXDCTL, SRRCTL, STATUS,
};
use crate::vfio::Bar;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

const MPC: usize = 0x4010;
const RNBC: usize = 0x40a0;
/// Receive queue 0's drop counter (clear on read); also on a VF.
const RQDPC: usize = 0x2830;

const CTRL_SLU: u32 = 0x40;
const CTRL_FD: u32 = 0x1;
/// EN, unicast and multicast promiscuous, broadcast accept, strip CRC.
pub const RCTL_STREAM: u32 = 0x2 | 0x8 | 0x10 | 0x8000 | 0x0400_0000;
/// Advanced one-buffer descriptors, 2 KiB buffers.
pub const SRRCTL_STREAM: u32 = 0x0200_0000 | 2;
/// Bytes of one receive buffer.
pub const BUF: usize = 2048;
const DD: u32 = 1;
const EOP: u32 = 2;

/// Where the ring and buffers are: CPU pointers into the caller's
/// mapping and the IOVAs the device reaches them at.
pub struct RxRing {
    pub ring: *mut u8,
    pub ring_iova: u64,
    pub bufs: *mut u8,
    pub bufs_iova: u64,
    /// Descriptors, a multiple of 8 (RDLEN is in 128-byte units), at most
    /// 65528 (QEMU masks RDLEN to 20 bits).
    pub len: usize,
}

/// The queue registers a receiver programs; compared after an adoption.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct QueueRegs {
    pub rdbal: u32,
    pub rdbah: u32,
    pub rdlen: u32,
    pub srrctl: u32,
    pub rxdctl_enabled: bool,
    pub rctl: u32,
}

pub struct IgbRx {
    /// Where the queue's registers are: the PF's BAR 0, or a VF's.
    bar: Bar,
    /// For a VF's queue: its PF's BAR 0, where the port's registers are.
    port: Option<Bar>,
    ring: RxRing,
    /// Next descriptor the software expects the device to complete.
    head: usize,
    /// Descriptors handled since RDT was last moved.
    unposted: usize,
}

impl IgbRx {
    /// Resets the device, brings the link up (no loopback) and starts
    /// receiving into every descriptor but one. Bus mastering must be on.
    ///
    /// # Safety
    ///
    /// `ring.ring` must point to `ring.len` descriptors and `ring.bufs` to
    /// `ring.len` buffers of [`BUF`] bytes, mapped for as long as the
    /// device may DMA (which outlives this value: it is never stopped on
    /// drop), and reachable by the device at the IOVAs given.
    pub unsafe fn init(bar: Bar, ring: RxRing) -> Result<IgbRx, String> {
        check_len(ring.len)?;
        reset_port(&bar)?;
        let rx = IgbRx::program(bar, None, ring);
        rx.bar.write(RCTL, RCTL_STREAM);
        rx.start()
    }

    /// Resets the VF whose BAR 0 is `vf` and starts receiving on its queue
    /// 0 into every descriptor but one. The port is the PF's, whose BAR 0
    /// is `pf`: it must be up and receiving (RCTL), with the VF enabled and
    /// the VF's bus mastering on. Writes nothing to the PF.
    ///
    /// # Safety
    ///
    /// As for [`IgbRx::init`].
    pub unsafe fn init_queue(vf: Bar, pf: Bar, ring: RxRing) -> Result<IgbRx, String> {
        check_len(ring.len)?;
        vf_reset(&vf)?;
        IgbRx::program(vf, Some(pf), ring).start()
    }

    /// Arms every descriptor and programs and enables the queue, RDT 0.
    fn program(bar: Bar, port: Option<Bar>, ring: RxRing) -> IgbRx {
        let mut rx = IgbRx {
            bar,
            port,
            ring,
            head: 0,
            unposted: 0,
        };
        for i in 0..rx.ring.len {
            rx.arm(i);
        }
        let b = &rx.bar;
        let r = &rx.ring;
        b.write(RDBAL, r.ring_iova as u32);
        b.write(RDBAH, (r.ring_iova >> 32) as u32);
        b.write(RDLEN, (r.len * 16) as u32);
        b.write(SRRCTL, SRRCTL_STREAM);
        b.write(RDH, 0);
        b.write(RDT, 0);
        b.write(RXDCTL, QUEUE_ENABLE);
        rx
    }

    /// Waits for the queue and the link, clears the drop counters and
    /// gives the device every descriptor but one.
    fn start(self) -> Result<IgbRx, String> {
        let b = &self.bar;
        let deadline = Instant::now() + Duration::from_secs(2);
        while b.read(RXDCTL) & QUEUE_ENABLE == 0 {
            if Instant::now() > deadline {
                let port = self.port();
                return Err(format!(
                    "igb RX queue did not enable: RXDCTL {:#x} RDLEN {:#x} STATUS {:#x}; port RXDCTL {:#x} RDLEN {:#x} STATUS {:#x}",
                    b.read(RXDCTL),
                    b.read(RDLEN),
                    b.read(STATUS),
                    port.read(RXDCTL),
                    port.read(RDLEN),
                    port.read(STATUS)
                ));
            }
            std::thread::sleep(Duration::from_micros(10));
        }
        wait_link(self.port())?;
        // Clear the clear-on-read drop counters.
        let _ = (self.drop_counters(), self.queue_drops());
        fence(Ordering::Release);
        b.write(RDT, (self.ring.len - 1) as u32);
        Ok(self)
    }

    /// Continues a receiver that a previous kernel's VMM left running,
    /// from software head `head`, without writing any register. Fails if
    /// the queue is not programmed as `want`. `port` is the PF's BAR 0 if
    /// `bar` is a VF's.
    ///
    /// # Safety
    ///
    /// As for [`IgbRx::init`]; `ring` must be the memory the device was
    /// programmed with.
    pub unsafe fn adopt(
        bar: Bar,
        port: Option<Bar>,
        ring: RxRing,
        head: usize,
        want: &QueueRegs,
    ) -> Result<IgbRx, String> {
        check_len(ring.len)?;
        if head >= ring.len {
            return Err(format!("software head {head} outside the ring"));
        }
        let rx = IgbRx {
            bar,
            port,
            ring,
            head,
            unposted: 0,
        };
        let got = rx.queue_regs();
        if got != *want {
            return Err(format!(
                "igb queue after the live update: {got:x?}, expected {want:x?}"
            ));
        }
        Ok(rx)
    }

    /// The registers of the queue as the device has them now.
    pub fn queue_regs(&self) -> QueueRegs {
        let b = &self.bar;
        QueueRegs {
            rdbal: b.read(RDBAL),
            rdbah: b.read(RDBAH),
            rdlen: b.read(RDLEN),
            srrctl: b.read(SRRCTL),
            rxdctl_enabled: b.read(RXDCTL) & QUEUE_ENABLE != 0,
            rctl: self.port().read(RCTL),
        }
    }

    /// The BAR with the port's registers.
    fn port(&self) -> &Bar {
        self.port.as_ref().unwrap_or(&self.bar)
    }

    /// The software head.
    pub fn head(&self) -> usize {
        self.head
    }

    /// Frames the device dropped since the last call: (missed packets,
    /// receive-no-buffer events); clear-on-read registers.
    pub fn drop_counters(&self) -> (u32, u32) {
        (self.port().read(MPC), self.port().read(RNBC))
    }

    /// For a VF's queue: frames its queue dropped since the last call
    /// (RQDPC, clear on read); `None` on the PF.
    pub fn queue_drops(&self) -> Option<u32> {
        self.port.as_ref().map(|_| self.bar.read(RQDPC))
    }

    /// Completed descriptors waiting from the software head, not consumed.
    pub fn pending(&self) -> usize {
        let mut n = 0;
        while n < self.ring.len && self.status((self.head + n) % self.ring.len) & DD != 0 {
            n += 1;
        }
        n
    }

    /// The frame in the `k`-th pending descriptor, not consumed.
    pub fn peek(&self, k: usize) -> Option<&[u8]> {
        let i = (self.head + k) % self.ring.len;
        let status = self.status(i);
        if status & DD == 0 {
            return None;
        }
        fence(Ordering::Acquire);
        Some(self.frame(i))
    }

    /// Hands every completed descriptor to `f` (the frame, or `None` for a
    /// descriptor without EOP, i.e. a frame larger than a buffer), re-arms
    /// it and gives the ring back to the device in batches. Returns how
    /// many were handled.
    pub fn poll(&mut self, mut f: impl FnMut(Option<&[u8]>)) -> usize {
        let mut n = 0;
        while n < self.ring.len - 1 {
            let i = self.head;
            let status = self.status(i);
            if status & DD == 0 {
                break;
            }
            fence(Ordering::Acquire);
            f((status & EOP != 0).then(|| self.frame(i)));
            self.arm(i);
            self.head = (i + 1) % self.ring.len;
            self.unposted += 1;
            n += 1;
            if self.unposted >= 64 {
                self.post();
            }
        }
        if n > 0 {
            self.post();
        }
        n
    }

    /// Gives every handled descriptor back to the device (RDT one behind
    /// the software head).
    pub fn post(&mut self) {
        fence(Ordering::Release);
        let tail = (self.head + self.ring.len - 1) % self.ring.len;
        self.bar.write(RDT, tail as u32);
        self.unposted = 0;
    }

    fn desc(&self, i: usize) -> *mut u8 {
        // SAFETY: `i < len`: inside the ring the caller mapped.
        unsafe { self.ring.ring.add((i % self.ring.len) * 16) }
    }

    fn status(&self, i: usize) -> u32 {
        // SAFETY: a descriptor of the ring; the device writes it.
        unsafe { self.desc(i).cast::<u32>().add(2).read_volatile() }
    }

    fn frame(&self, i: usize) -> &[u8] {
        // SAFETY: a completed descriptor (DD seen, acquire fence): the
        // device wrote its length and buffer and will not touch either
        // until the descriptor is re-armed and posted.
        unsafe {
            let len = self.desc(i).cast::<u16>().add(6).read_volatile() as usize;
            std::slice::from_raw_parts(self.ring.bufs.add(i * BUF), len.min(BUF))
        }
    }

    fn arm(&mut self, i: usize) {
        let iova = self.ring.bufs_iova + (i * BUF) as u64;
        let d = self.desc(i);
        // SAFETY: a descriptor of the ring the device does not own now
        // (before RDT covers it). Writing hdr_addr clears status/length.
        unsafe {
            d.cast::<u64>().write_volatile(iova);
            d.cast::<u64>().add(1).write_volatile(0);
        }
    }
}

/// Resets the port (the PF) and starts autonegotiation (QEMU raises the
/// link from a timer); no loopback.
pub fn reset_port(bar: &Bar) -> Result<(), String> {
    reset(bar)?;
    bar.write(CTRL, bar.read(CTRL) | CTRL_SLU | CTRL_FD);
    write_phy(bar, 0, 0x1000 | 0x0200)
}

fn check_len(len: usize) -> Result<(), String> {
    if len < 8 || !len.is_multiple_of(8) || len > 65528 {
        return Err(format!("{len} descriptors: a multiple of 8 in 8..=65528"));
    }
    Ok(())
}
