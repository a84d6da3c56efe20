// SPDX-License-Identifier: GPL-2.0-only
//! The iommufd handover blob: valid contents round-trip; any damage is
//! refused with a reason and never panics; each rule has its refusal;
//! the restore check accepts exactly the page tables that translate what
//! was handed over, however they are split into leaves.

use guestmemfs_format::layout::crc32c;
use iommu_liveupdate_format::*;
use proptest::prelude::*;

const PAGE: u64 = 4096;
const MIB2: u64 = 2 << 20;

/// Valid HWPTs and areas: `counts[i]` areas for HWPT i, at increasing
/// page-aligned IOVAs.
fn contents() -> impl Strategy<Value = (Vec<Hwpt>, Vec<Area>)> {
    prop::collection::vec(
        prop::collection::vec((1u64..64, 0u64..8, 1u64..1000, 0u64..4096, 1u32..8), 0..6),
        1..5,
    )
    .prop_map(|hwpts| {
        let (mut hs, mut areas) = (Vec::new(), Vec::new());
        for (n, list) in hwpts.iter().enumerate() {
            let first = areas.len() as u32;
            let mut iova = 0u64;
            for &(pages, gap, ino, off, prot) in list {
                iova += gap * PAGE;
                areas.push(Area {
                    iova,
                    length: pages * PAGE,
                    ino,
                    igen: ino * 3,
                    offset: off * PAGE,
                    prot: if prot & 3 == 0 { prot | 1 } else { prot },
                });
                iova += pages * PAGE;
            }
            hs.push(Hwpt {
                token: 0x100 + n as u64,
                domain: n as u32,
                flags: (n as u32) & 1,
                first_area: first,
                nr_areas: list.len() as u32,
            });
        }
        (hs, areas)
    })
}

fn enc(hwpts: &[Hwpt], areas: &[Area]) -> Vec<u8> {
    let mut buf = vec![0u8; blob_len(hwpts.len(), areas.len()).unwrap()];
    encode(&mut buf, hwpts, areas, crc32c).unwrap();
    buf
}

fn reseal(buf: &mut [u8]) {
    let n = buf.len();
    let sum = crc32c(&buf[..n - 4]);
    buf[n - 4..].copy_from_slice(&sum.to_le_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip((hwpts, areas) in contents()) {
        let buf = enc(&hwpts, &areas);
        let b = Blob::parse(&buf, crc32c).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(b.nr_hwpts() as usize, hwpts.len());
        for (n, h) in hwpts.iter().enumerate() {
            prop_assert_eq!(&b.hwpt(n as u32).unwrap(), h);
            prop_assert_eq!(b.find(h.token).map(|x| x.0), Some(n as u32));
        }
        for (i, a) in areas.iter().enumerate() {
            prop_assert_eq!(&b.area(i as u32).unwrap(), a);
        }
    }

    #[test]
    fn damage_is_refused_never_panics(
        (hwpts, areas) in contents(),
        flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in any::<usize>(),
        reseal_it in any::<bool>(),
    ) {
        let good = enc(&hwpts, &areas);
        let mut buf = good.clone();
        for (at, x) in flips {
            let at = at % buf.len();
            buf[at] ^= x;
        }
        // Flips that cancel out leave the blob intact.
        prop_assume!(buf != good);
        if reseal_it {
            reseal(&mut buf);
        }
        // A flip is caught by the checksum, or (resealed) by a rule, or it
        // hit a field any value of which is valid (then it decodes).
        if let Ok(b) = Blob::parse(&buf, crc32c) {
            prop_assert!(reseal_it, "a damaged blob passed its checksum");
            for n in 0..b.nr_hwpts() {
                let _ = b.hwpt(n);
            }
        }
        let _ = Blob::parse(&buf[..cut % (buf.len() + 1)], crc32c);
        if cut % (good.len() + 1) < good.len() {
            prop_assert!(Blob::parse(&good[..cut % (good.len() + 1)], crc32c).is_err());
        }
    }

    /// The translation check against a page model: any split of the
    /// expected pieces into leaves, including leaves that span several
    /// pieces (a 1 GiB leaf over 512 file blocks), is accepted; a changed,
    /// missing or extra page is refused with its kind at its IOVA.
    #[test]
    fn translation_check(
        runs in prop::collection::vec((1u64..8, 0u64..3, 0u64..3, 1u32..3), 1..10),
        splits in prop::collection::vec(any::<u16>(), 0..20),
        damage in 0u8..4,
        pick in any::<u16>(),
    ) {
        // Expected pieces: some contiguous with the previous one in IOVA,
        // physical address and prot (gap 0, jump 0), some not.
        let mut expected: Vec<Piece> = Vec::new();
        let (mut iova, mut phys) = (0x1000_0000u64, 0x1_0000_0000u64);
        for &(pages, gap, jump, prot) in &runs {
            let prot = if gap == 0 && jump == 0 {
                expected.last().map_or(prot, |p| p.prot)
            } else {
                prot
            };
            iova += gap * MIB2;
            phys += jump * MIB2;
            expected.push(Piece { iova, phys, len: pages * PAGE, prot });
            iova += pages * PAGE;
            phys += pages * PAGE;
        }
        // Leaves: the maximal runs of the expected pieces, split at
        // arbitrary page boundaries (so leaves may span pieces).
        let mut merged: Vec<Piece> = Vec::new();
        for e in &expected {
            match merged.last_mut() {
                Some(m) if m.iova + m.len == e.iova && m.phys + m.len == e.phys && m.prot == e.prot => {
                    m.len += e.len
                }
                _ => merged.push(*e),
            }
        }
        let mut leaves: Vec<Piece> = Vec::new();
        for m in &merged {
            let mut cuts: Vec<u64> = splits
                .iter()
                .map(|s| u64::from(*s) % (m.len / PAGE) * PAGE)
                .filter(|&c| c != 0)
                .collect();
            cuts.sort();
            cuts.dedup();
            let mut from = 0;
            for c in cuts.into_iter().chain([m.len]) {
                leaves.push(Piece { iova: m.iova + from, phys: m.phys + from, len: c - from, prot: m.prot });
                from = c;
            }
        }
        prop_assert_eq!(check_translation(expected.iter().copied(), leaves.iter().copied()), Ok(()));
        let k = pick as usize % leaves.len();
        let victim = leaves[k];
        let want = match damage {
            0 => {
                leaves[k].phys += 8 * MIB2;
                Refusal::Mismatch { iova: victim.iova }
            }
            1 => {
                leaves.remove(k);
                Refusal::Unmapped { iova: victim.iova }
            }
            2 => {
                leaves[k].prot ^= PROT_WRITE;
                Refusal::Mismatch { iova: victim.iova }
            }
            _ => {
                let end = leaves.last().map(|l| l.iova + l.len).unwrap();
                leaves.push(Piece { iova: end + MIB2, phys: 0x5000_0000, len: PAGE, prot: 1 });
                Refusal::ExtraMapping { iova: end + MIB2 }
            }
        };
        prop_assert_eq!(check_translation(expected.iter().copied(), leaves.iter().copied()), Err(want));
    }
}

/// The refusal names the first differing IOVA, not the start of a run.
#[test]
fn first_difference_inside_a_run() {
    let p = |iova, phys, len| Piece {
        iova,
        phys,
        len,
        prot: PROT_READ,
    };
    let want = [p(0, 0x10_0000, 2 * PAGE)];
    let check = |leaves: &[Piece]| check_translation(want.iter().copied(), leaves.iter().copied());
    assert_eq!(
        check(&[p(0, 0x10_0000, PAGE), p(PAGE, 0x20_0000, PAGE)]),
        Err(Refusal::Mismatch { iova: PAGE })
    );
    assert_eq!(
        check(&[p(0, 0x10_0000, PAGE)]),
        Err(Refusal::Unmapped { iova: PAGE })
    );
    assert_eq!(
        check(&[p(0, 0x10_0000, 3 * PAGE)]),
        Err(Refusal::ExtraMapping { iova: 2 * PAGE })
    );
    assert_eq!(check(&[p(0, 0x10_0000, 2 * PAGE)]), Ok(()));
    // Lengths near the top of the address space neither panic nor pass.
    assert!(check(&[p(0, 0x10_0000, u64::MAX), p(u64::MAX, 0, u64::MAX)]).is_err());
}

/// A cache-coherent HWPT's leaves must all snoop; otherwise snooping is
/// not compared, access is.
#[test]
fn snoop_of_coherent_hwpts() {
    let p = |iova, prot| Piece {
        iova,
        phys: 0x10_0000 + iova,
        len: PAGE,
        prot,
    };
    let rw = PROT_READ | PROT_WRITE;
    let want = [p(0, rw | PROT_CACHE), p(PAGE, rw | PROT_CACHE)];
    let check = |leaves: &[Piece], flags| {
        check_hwpt_translation(want.iter().copied(), leaves.iter().copied(), flags)
    };
    let snooping = [p(0, rw | PROT_CACHE), p(PAGE, rw | PROT_CACHE)];
    let one_not = [p(0, rw | PROT_CACHE), p(PAGE, rw)];
    assert_eq!(check(&snooping, HWPT_ENFORCE_CC), Ok(()));
    assert_eq!(
        check(&one_not, HWPT_ENFORCE_CC),
        Err(Refusal::NoSnoop { iova: PAGE })
    );
    assert_eq!(check(&one_not, 0), Ok(()));
    // Access still counts, with or without coherency.
    assert_eq!(
        check(&[p(0, rw | PROT_CACHE), p(PAGE, PROT_READ | PROT_CACHE)], 0),
        Err(Refusal::Mismatch { iova: PAGE })
    );
    assert_eq!(
        Refusal::NoSnoop { iova: PAGE }.to_string(),
        "IOVA 0x1000 does not snoop in a cache-coherent HWPT"
    );
}

/// Every rule has its refusal (fields set with a valid checksum).
#[test]
fn each_rule_refused() {
    let hwpts = [
        Hwpt {
            token: 7,
            domain: 0,
            flags: 0,
            first_area: 0,
            nr_areas: 2,
        },
        Hwpt {
            token: 8,
            domain: 1,
            flags: 1,
            first_area: 2,
            nr_areas: 1,
        },
    ];
    let a = |iova, length| Area {
        iova,
        length,
        ino: 5,
        igen: 1,
        offset: 0,
        prot: PROT_READ | PROT_WRITE,
    };
    let areas = [a(0, 2 * PAGE), a(4 * PAGE, PAGE), a(0, PAGE)];
    let good = enc(&hwpts, &areas);
    assert!(Blob::parse(&good, crc32c).is_ok());
    let area0 = HEADER + 2 * HWPT;
    let mut cases: Vec<(usize, Vec<u8>, Refusal)> = vec![
        (0, b"IOFDLU02".to_vec(), Refusal::BadMagic),
        (8, 2u32.to_le_bytes().to_vec(), Refusal::BadVersion(2)),
        (16, 3u32.to_le_bytes().to_vec(), Refusal::BadLength),
        (16, 0u32.to_le_bytes().to_vec(), Refusal::BadCounts),
        (24, 1u32.to_le_bytes().to_vec(), Refusal::NonZeroReserved),
        (
            HEADER + 12,
            2u32.to_le_bytes().to_vec(),
            Refusal::NonZeroReserved,
        ),
        (
            HEADER + 24,
            1u64.to_le_bytes().to_vec(),
            Refusal::NonZeroReserved,
        ),
        (HEADER, 0u64.to_le_bytes().to_vec(), Refusal::BadToken(0)),
        (
            HEADER + HWPT,
            7u64.to_le_bytes().to_vec(),
            Refusal::BadToken(1),
        ),
        (
            HEADER + HWPT + 16,
            1u32.to_le_bytes().to_vec(),
            Refusal::BadAreaRange(1),
        ),
        (
            HEADER + 20,
            4u32.to_le_bytes().to_vec(),
            Refusal::BadAreaRange(0),
        ),
        (area0 + 8, 0u64.to_le_bytes().to_vec(), Refusal::BadArea(0)),
        (area0, 1u64.to_le_bytes().to_vec(), Refusal::BadArea(0)),
        (area0 + 32, 7u64.to_le_bytes().to_vec(), Refusal::BadArea(0)),
        (area0 + 40, 4u32.to_le_bytes().to_vec(), Refusal::BadArea(0)),
        (area0 + 40, 8u32.to_le_bytes().to_vec(), Refusal::BadArea(0)),
        (area0 + 16, 0u64.to_le_bytes().to_vec(), Refusal::BadArea(0)),
        (
            area0 + 44,
            1u32.to_le_bytes().to_vec(),
            Refusal::NonZeroReserved,
        ),
        (
            area0 + AREA,
            PAGE.to_le_bytes().to_vec(),
            Refusal::AreaOrder(1),
        ),
        (
            area0 + 8,
            u64::MAX.to_le_bytes().to_vec(),
            Refusal::BadArea(0),
        ),
    ];
    cases.extend([
        // Header reserved (byte 28), the limits, an offset overflowing.
        (28, 1u32.to_le_bytes().to_vec(), Refusal::NonZeroReserved),
        (
            16,
            (MAX_HWPTS + 1).to_le_bytes().to_vec(),
            Refusal::BadCounts,
        ),
        (
            20,
            (MAX_AREAS + 1).to_le_bytes().to_vec(),
            Refusal::BadCounts,
        ),
        (
            area0 + 32,
            (u64::MAX - PAGE + 1).to_le_bytes().to_vec(),
            Refusal::BadArea(0),
        ),
        // Two HWPTs on one domain; areas left out of every HWPT.
        (
            HEADER + HWPT + 8,
            0u32.to_le_bytes().to_vec(),
            Refusal::DuplicateDomain(1),
        ),
        (
            HEADER + HWPT + 20,
            0u32.to_le_bytes().to_vec(),
            Refusal::BadAreaRange(1),
        ),
    ]);
    for (off, bytes, want) in cases {
        let mut b = good.clone();
        b[off..off + bytes.len()].copy_from_slice(&bytes);
        reseal(&mut b);
        assert_eq!(
            Blob::parse(&b, crc32c).map(|_| ()),
            Err(want),
            "offset {off}"
        );
    }
    let mut b = good.clone();
    b[40] ^= 1;
    assert_eq!(
        Blob::parse(&b, crc32c).map(|_| ()),
        Err(Refusal::BadChecksum)
    );
    assert_eq!(
        Blob::parse(&good[..20], crc32c).map(|_| ()),
        Err(Refusal::Truncated)
    );
    let mut short = good.clone();
    short.truncate(good.len() - 1);
    assert_eq!(
        Blob::parse(&short, crc32c).map(|_| ()),
        Err(Refusal::Truncated)
    );
}
