// SPDX-License-Identifier: GPL-2.0-only
//! A minimal polling driver for the Intel 82576 (igb) that QEMU emulates:
//! MAC loopback, one TX and one RX ring, each frame copied by the device
//! from a source IOVA to a destination IOVA. It is the 7.3 tree's
//! `tools/testing/selftests/vfio/lib/drivers/igb/igb.c` sequence, without
//! interrupts. Rings and buffers live in memory the caller DMA-maps; the
//! driver reaches them only through raw pointers with volatile accesses.

use crate::vfio::Bar;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

pub(crate) const CTRL: usize = 0x0000;
pub(crate) const STATUS: usize = 0x0008;
const EECD: usize = 0x0010;
const CTRL_EXT: usize = 0x0018;
const MDIC: usize = 0x0020;
pub(crate) const RCTL: usize = 0x0100;
const TCTL: usize = 0x0400;
const IMC: usize = 0x00d8;
const EIMC: usize = 0x1528;
const GCR: usize = 0x5b00;
pub(crate) const RDBAL: usize = 0x2800;
pub(crate) const RDBAH: usize = 0x2804;
pub(crate) const RDLEN: usize = 0x2808;
pub(crate) const SRRCTL: usize = 0x280c;
pub(crate) const RDH: usize = 0x2810;
pub(crate) const RDT: usize = 0x2818;
pub(crate) const RXDCTL: usize = 0x2828;
const TDBAL: usize = 0x3800;
const TDBAH: usize = 0x3804;
const TDLEN: usize = 0x3808;
const TDH: usize = 0x3810;
const TDT: usize = 0x3818;
const TXDCTL: usize = 0x3828;

const CTRL_RST: u32 = 0x0400_0000;
pub(crate) const QUEUE_ENABLE: u32 = 0x0200_0000;
const MDIC_READY: u32 = 0x1000_0000;
const MDIC_ERROR: u32 = 0x4000_0000;

/// Descriptors per ring (16 bytes each).
pub const RING: usize = 4096;
/// Bytes of one ring.
pub const RING_BYTES: u64 = (RING * 16) as u64;
/// Largest frame the loopback copies.
pub const MAX_FRAME: usize = 1024;

/// Where the rings are: CPU pointers into the caller's mapping and the
/// IOVAs the device uses for them.
pub struct Rings {
    pub tx: *mut u8,
    pub tx_iova: u64,
    pub rx: *mut u8,
    pub rx_iova: u64,
}

pub struct Igb {
    bar: Bar,
    rings: Rings,
    tail: usize,
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

impl Igb {
    /// Resets the device and brings it up in MAC loopback with both rings
    /// enabled, link up. Bus mastering must already be on.
    ///
    /// # Safety
    ///
    /// `rings.tx` and `rings.rx` must point to [`RING_BYTES`] bytes each
    /// that stay mapped while the `Igb` exists, and that the device reaches
    /// at `tx_iova` and `rx_iova`; nothing else may write the RX ring
    /// between a [`Igb::submit`] and its [`Igb::wait`].
    pub unsafe fn init(bar: Bar, rings: Rings) -> Result<Igb, String> {
        let igb = Igb {
            bar,
            rings,
            tail: 0,
        };
        igb.reset()?;
        let b = &igb.bar;
        b.write(CTRL_EXT, (b.read(CTRL_EXT) | 0x1000_0000) & !0x00c0_0000);
        // PHY: autonegotiate once (QEMU sets link up from its timer),
        // then loopback at 1000/full.
        let _ = igb.write_phy(0, 0x1000 | 0x0200);
        igb.write_phy(0, 0x4000 | 0x0040 | 0x0100)?;
        sleep_ms(50);
        let b = &igb.bar;
        let ctrl = b.read(CTRL) & !0x300;
        b.write(CTRL, ctrl | 0x800 | 0x1000 | 0x200 | 0x1 | 0x40);
        sleep_ms(500);
        b.write(GCR, b.read(GCR) & !0x1_0000);
        let r = &igb.rings;
        b.write(TDBAL, r.tx_iova as u32);
        b.write(TDBAH, (r.tx_iova >> 32) as u32);
        b.write(TDLEN, RING_BYTES as u32);
        b.write(TDH, 0);
        b.write(TDT, 0);
        b.write(TXDCTL, QUEUE_ENABLE);
        b.write(RDBAL, r.rx_iova as u32);
        b.write(RDBAH, (r.rx_iova >> 32) as u32);
        b.write(RDLEN, RING_BYTES as u32);
        b.write(SRRCTL, 0x0200_0000);
        b.write(RDH, 0);
        b.write(RDT, 0);
        b.write(RXDCTL, QUEUE_ENABLE);
        // EN, UPE, MPE, BAM, MAC loopback, strip CRC; TX EN, pad.
        b.write(RCTL, 0x2 | 0x8 | 0x10 | 0x8000 | 0x40 | 0x0400_0000);
        b.write(TCTL, 0x2 | 0x8);
        let deadline = Instant::now() + Duration::from_secs(2);
        while b.read(TXDCTL) & QUEUE_ENABLE == 0 || b.read(RXDCTL) & QUEUE_ENABLE == 0 {
            if Instant::now() > deadline {
                return Err("igb queues did not enable".into());
            }
            std::thread::sleep(Duration::from_micros(10));
        }
        // Without link up the loopback drops every frame.
        wait_link(b)?;
        Ok(igb)
    }

    fn reset(&self) -> Result<(), String> {
        reset(&self.bar)
    }

    fn write_phy(&self, reg: u32, data: u32) -> Result<(), String> {
        write_phy(&self.bar, reg, data)
    }

    /// Queues one frame per `(src_iova, dst_iova, len)` and starts the
    /// device; [`Igb::wait`] waits for them.
    pub fn submit(&mut self, frames: &[(u64, u64, usize)]) -> Result<(), String> {
        if frames.is_empty() || frames.len() >= RING {
            return Err(format!("{} frames: 1..{} per batch", frames.len(), RING));
        }
        for &(src, dst, len) in frames {
            if !(60..=MAX_FRAME).contains(&len) {
                return Err(format!("frame of {len} bytes"));
            }
            let t = self.tail;
            let tx = self.desc(self.rings.tx, t);
            let rx = self.desc(self.rings.rx, t);
            // SAFETY: `t < RING`: inside the rings the caller mapped.
            unsafe {
                rx.cast::<u64>().write_volatile(dst);
                rx.cast::<u64>().add(1).write_volatile(0);
                tx.cast::<u64>().write_volatile(src);
                let cmd = len as u32 | 0x0030_0000 | 0x2000_0000 | 0x0200_0000 | 0x0100_0000;
                tx.cast::<u32>().add(2).write_volatile(cmd);
                tx.cast::<u32>().add(3).write_volatile((len as u32) << 14);
            }
            self.tail = (t + 1) % RING;
        }
        fence(Ordering::Release);
        self.bar.write(RDT, self.tail as u32);
        self.bar.write(TDT, self.tail as u32);
        Ok(())
    }

    /// Waits until the last `n` frames submitted came back (descriptor
    /// done), and checks each one's length. Done does not prove the data
    /// arrived: the caller compares it.
    pub fn wait(
        &self,
        n: usize,
        lens: impl Fn(usize) -> usize,
        limit: Duration,
    ) -> Result<(), String> {
        let last = (self.tail + RING - 1) % RING;
        let deadline = Instant::now() + limit;
        // SAFETY (all reads below): descriptors inside the RX ring.
        while unsafe {
            self.desc(self.rings.rx, last)
                .cast::<u32>()
                .add(2)
                .read_volatile()
        } & 1
            == 0
        {
            if Instant::now() > deadline {
                return Err(format!("igb: frame {last} not done after {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        fence(Ordering::Acquire);
        for k in 0..n {
            let i = (self.tail + RING - n + k) % RING;
            let d = self.desc(self.rings.rx, i);
            // SAFETY: as above.
            let (status, len) = unsafe {
                (
                    d.cast::<u32>().add(2).read_volatile(),
                    d.cast::<u16>().add(6).read_volatile(),
                )
            };
            if status & 1 == 0 || usize::from(len) != lens(k) {
                return Err(format!(
                    "igb: frame {k}: status {status:#x}, length {len}, expected {}",
                    lens(k)
                ));
            }
        }
        Ok(())
    }

    fn desc(&self, ring: *mut u8, i: usize) -> *mut u8 {
        // SAFETY: `i < RING`; the ring is RING descriptors of 16 bytes.
        unsafe { ring.add((i % RING) * 16) }
    }

    /// Stops both queues and resets the device (no DMA afterwards).
    pub fn remove(&self) {
        self.bar.write(RCTL, 0);
        self.bar.write(TCTL, 0);
        let _ = self.reset();
    }
}

/// Resets the device and masks every interrupt cause.
pub(crate) fn reset(b: &Bar) -> Result<(), String> {
    b.write(CTRL, b.read(CTRL) | CTRL_RST);
    sleep_ms(1);
    let deadline = Instant::now() + Duration::from_millis(20);
    while b.read(EECD) & 0x200 == 0 && Instant::now() < deadline {
        sleep_ms(1);
    }
    if b.read(CTRL) & CTRL_RST != 0 {
        return Err("igb reset did not complete".into());
    }
    b.write(IMC, !0);
    b.write(EIMC, !0);
    Ok(())
}

/// Resets a VF: its `CTRL` is the PF's `PVTCTRL`, whose `RST` stops the
/// VF's queues (QEMU's `igb_core_vf_reset`) and touches nothing of the
/// port.
pub(crate) fn vf_reset(b: &Bar) -> Result<(), String> {
    b.write(CTRL, CTRL_RST);
    sleep_ms(1);
    if b.read(CTRL) & CTRL_RST != 0 {
        return Err("igb VF reset did not complete".into());
    }
    if b.read(RXDCTL) & QUEUE_ENABLE != 0 {
        return Err("igb VF reset left RX queue 0 enabled".into());
    }
    Ok(())
}

/// Waits for link up (QEMU brings the link up from a timer; under TCG it
/// can be late).
pub(crate) fn wait_link(b: &Bar) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.read(STATUS) & 2 == 0 {
        if Instant::now() > deadline {
            return Err("igb link did not come up".into());
        }
        sleep_ms(10);
    }
    Ok(())
}

/// Writes PHY register `reg` through MDIC.
pub(crate) fn write_phy(b: &Bar, reg: u32, data: u32) -> Result<(), String> {
    b.write(MDIC, data | (reg << 16) | (1 << 21) | 0x0400_0000);
    for _ in 0..1000 {
        let v = b.read(MDIC);
        if v & MDIC_READY != 0 {
            return if v & MDIC_ERROR != 0 {
                Err(format!("PHY write {reg}: error"))
            } else {
                Ok(())
            };
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Err(format!("PHY write {reg}: timeout"))
}

impl Drop for Igb {
    /// Never leave the device DMAing (an early return of a test).
    fn drop(&mut self) {
        self.remove();
    }
}
