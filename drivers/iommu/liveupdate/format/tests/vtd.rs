// SPDX-License-Identifier: GPL-2.0-only
//! The VT-d handover blob: valid contents round-trip; every rule has its
//! refusal, with the C parser's reason text, reached by one targeted
//! mutation; any damage (resealed or not) is refused or decodes in
//! bounds, never panics, and gets the answer of a literal transliteration
//! of the C parser (`intel_lu_parse()`, same checks, same order); the
//! encoder refuses exactly what the parser would.

use iommu_liveupdate_format::vtd::*;
use proptest::prelude::*;
use proptest::sample::Index;

/// The kernel's `crc32c(seed, p, len)`: CRC-32C without pre- or
/// post-inversion, so it chains (`crc32c(crc32c(s, a), b)` is
/// `crc32c(s, a ++ b)`). Table driven; checked against the guestmemfs
/// crate's (standard, inverted) crc32c below.
fn kcrc(seed: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = (c >> 1) ^ (0x82f6_3b78 & (c & 1).wrapping_neg());
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    data.iter().fold(seed, |c, &b| {
        (c >> 8) ^ TABLE[((c ^ u32::from(b)) & 0xff) as usize]
    })
}

const CRC: &dyn Fn(u32, &[u8]) -> u32 = &kcrc;

#[test]
fn kcrc_is_the_kernels_crc32c() {
    use guestmemfs_format::layout::crc32c;
    let data: Vec<u8> = (0..300u32).map(|i| ((i * 151) ^ 0x5a) as u8).collect();
    for end in [0, 1, 7, 8, 9, 32, 299, 300] {
        // The standard CRC-32C is the kernel's with ~0 in and out.
        assert_eq!(!kcrc(!0, &data[..end]), crc32c(&data[..end]));
        for cut in [0, end / 3, end] {
            for seed in [0, 1, !0, 0x1234_5678] {
                assert_eq!(
                    kcrc(kcrc(seed, &data[..cut]), &data[cut..end]),
                    kcrc(seed, &data[..end])
                );
            }
        }
    }
    assert_eq!(!kcrc(!0, b"123456789"), 0xe306_9283);
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Contents {
    units: Vec<Unit>,
    domains: Vec<Domain>,
    devices: Vec<Device>,
    pages: Vec<u64>,
}

impl Contents {
    fn len(&self) -> usize {
        blob_len(
            self.units.len(),
            self.domains.len(),
            self.devices.len(),
            self.pages.len(),
        )
        .unwrap()
    }

    fn scratch(&self) -> Vec<u64> {
        vec![0; scratch_len(self.units.len(), self.pages.len())]
    }
}

/// Valid contents: distinct non-zero aligned pages (and roots, one maybe
/// 0) dealt to the slices, each slice sorted; tops in their slices;
/// unique non-zero tokens; devices only on domains with a unit.
fn contents() -> impl Strategy<Value = Contents> {
    let units = prop::collection::vec((any::<u64>(), 0usize..4), 0..4);
    let domains = prop::collection::vec(
        (
            1usize..6,
            any::<u16>(),
            any::<u16>(),
            0u8..8,
            any::<bool>(),
            any::<Index>(),
        ),
        0..5,
    );
    let devices = prop::collection::vec(
        (any::<u16>(), any::<u8>(), any::<u8>(), any::<Index>()),
        0..6,
    );
    (units, domains, devices, any::<u64>(), any::<bool>())
        .prop_flat_map(|(u, d, v, salt, root0)| {
            let total = u.len()
                + u.iter().map(|x| x.1).sum::<usize>()
                + d.iter().map(|x| x.0).sum::<usize>();
            let frames = prop::collection::btree_set(1u64..1 << 40, total..=total)
                .prop_map(|s| s.into_iter().collect::<Vec<_>>())
                .prop_shuffle();
            (Just(u), Just(d), Just(v), Just(salt), Just(root0), frames)
        })
        .prop_map(|(u, d, v, salt, root0, frames)| {
            let mut frames = frames.into_iter().map(|f| f << 12);
            let mut c = Contents::default();
            let nu = u.len();
            let mut slice = |n: usize, pages: &mut Vec<u64>| {
                let mut s: Vec<u64> = frames.by_ref().take(n).collect();
                s.sort_unstable();
                pages.extend(&s);
                s
            };
            let mut pages = Vec::new();
            for (i, &(reg, nctx)) in u.iter().enumerate() {
                let root = slice(1, &mut Vec::new())[0];
                let first = pages.len() as u32;
                slice(nctx, &mut pages);
                c.units.push(Unit {
                    reg_phys: reg,
                    root_phys: if root0 && i == 0 { 0 } else { root },
                    first_page: first,
                    nr_pages: nctx as u32,
                });
            }
            for (i, &(n, sel, did, aw, incoherent, top)) in d.iter().enumerate() {
                let first = pages.len() as u32;
                let s = slice(n, &mut pages);
                let unit = match sel as usize % (nu + 1) {
                    x if x == nu => NO_UNIT,
                    x => x as u16,
                };
                c.domains.push(Domain {
                    token: (i as u64 + 1).wrapping_mul(salt | 1),
                    top_phys: s[top.index(n)],
                    first_page: first,
                    nr_pages: n as u32,
                    unit,
                    did,
                    aw,
                    flags: if incoherent { DOMAIN_INCOHERENT } else { 0 },
                    reserved: [0; 2],
                });
            }
            let with_unit: Vec<u16> = (0..c.domains.len() as u16)
                .filter(|&i| c.domains[i as usize].unit != NO_UNIT)
                .collect();
            if !with_unit.is_empty() {
                for &(segment, bus, devfn, dom) in &v {
                    c.devices.push(Device {
                        segment,
                        bus,
                        devfn,
                        domain: with_unit[dom.index(with_unit.len())],
                        reserved: 0,
                    });
                }
            }
            c.pages = pages;
            c
        })
}

fn enc(c: &Contents) -> Vec<u8> {
    let mut buf = vec![0u8; c.len()];
    let n = encode(
        &mut buf,
        &c.units,
        &c.domains,
        &c.devices,
        &c.pages,
        CRC,
        &mut c.scratch(),
    )
    .unwrap_or_else(|e| panic!("encode refused valid contents: {e}"));
    assert_eq!(n, buf.len());
    buf
}

/// The blob of `c` written field by field without any check (an
/// independent writer: the encoder's output must equal it).
fn raw(c: &Contents) -> Vec<u8> {
    let mut b = Vec::new();
    let (nu, nd, nv, np) = (
        c.units.len(),
        c.domains.len(),
        c.devices.len(),
        c.pages.len(),
    );
    let len = 40 + 24 * nu + 32 * nd + 8 * nv + 8 * np;
    b.extend(MAGIC.to_le_bytes());
    for v in [1, len, nu, nd, nv, np, 0, 0] {
        b.extend((v as u32).to_le_bytes());
    }
    for u in &c.units {
        b.extend(u.reg_phys.to_le_bytes());
        b.extend(u.root_phys.to_le_bytes());
        b.extend(u.first_page.to_le_bytes());
        b.extend(u.nr_pages.to_le_bytes());
    }
    for d in &c.domains {
        b.extend(d.token.to_le_bytes());
        b.extend(d.top_phys.to_le_bytes());
        b.extend(d.first_page.to_le_bytes());
        b.extend(d.nr_pages.to_le_bytes());
        b.extend(d.unit.to_le_bytes());
        b.extend(d.did.to_le_bytes());
        b.extend([d.aw, d.flags, d.reserved[0], d.reserved[1]]);
    }
    for v in &c.devices {
        b.extend(v.segment.to_le_bytes());
        b.extend([v.bus, v.devfn]);
        b.extend(v.domain.to_le_bytes());
        b.extend(v.reserved.to_le_bytes());
    }
    for p in &c.pages {
        b.extend(p.to_le_bytes());
    }
    reseal(&mut b);
    b
}

/// Recomputes the checksum after a change (as the C encoder does:
/// `crc32c(0, blob, len)` with the crc field 0).
fn reseal(buf: &mut [u8]) {
    if buf.len() >= HEADER {
        buf[CRC_OFFSET..HEADER].fill(0);
        let sum = kcrc(0, buf);
        buf[CRC_OFFSET..HEADER].copy_from_slice(&sum.to_le_bytes());
    }
}

/// `parse` with enough scratch (`len / 8` entries: the bound that does
/// not trust the header), as a reason text.
fn check(buf: &[u8]) -> Result<(), &'static str> {
    let mut scratch = vec![0u64; buf.len() / 8];
    parse(buf, CRC, &mut scratch)
        .map(|p| view_in_bounds(&p))
        .map_err(VtdRefusal::as_str)
}

/// A literal transliteration of the C `intel_lu_parse()` (with
/// `intel_lu_slice_ok()` and `intel_lu_disjoint()`): allocating,
/// quadratic, indexing as C does. The reference for `parse`.
fn c_parse(blob: &[u8]) -> Result<(), &'static str> {
    let len = blob.len();
    if len < 40 {
        return Err("truncated");
    }
    let le16 = |o: usize| u16::from_le_bytes(blob[o..o + 2].try_into().unwrap());
    let le32 = |o: usize| u32::from_le_bytes(blob[o..o + 4].try_into().unwrap());
    let le64 = |o: usize| u64::from_le_bytes(blob[o..o + 8].try_into().unwrap());
    if le64(0) != 0x3130_3055_4c44_5456 {
        return Err("bad magic");
    }
    if le32(8) != 1 {
        return Err("unsupported version");
    }
    if le32(12) as usize != len {
        return Err("length mismatch");
    }
    if le32(32) != 0 {
        return Err("unknown flags");
    }
    let (nu, nd, nv, np) = (le32(16), le32(20), le32(24), le32(28));
    if nu > 64 || nd > 4096 || nv > 4096 || np > 1 << 22 {
        return Err("too many records");
    }
    let want = 40 + nu as usize * 24 + nd as usize * 32 + nv as usize * 8 + np as usize * 8;
    if want != len {
        return Err("counts do not match the length");
    }
    let crc = le32(36);
    let mut copy = blob.to_vec();
    copy[36..40].fill(0);
    if kcrc(0, &copy) != crc {
        return Err("checksum mismatch");
    }
    let unit = |i: u32| 40 + i as usize * 24;
    let domain = |i: u32| 40 + nu as usize * 24 + i as usize * 32;
    let device = |i: u32| domain(nd) + i as usize * 8;
    let page = |i: u32| le64(device(nv) + i as usize * 8);
    let mut next: u64 = 0;
    for i in 0..nu {
        if u64::from(le32(unit(i) + 16)) != next {
            return Err("page slices do not tile the list");
        }
        next += u64::from(le32(unit(i) + 20).min(np));
    }
    for i in 0..nd {
        if u64::from(le32(domain(i) + 16)) != next {
            return Err("page slices do not tile the list");
        }
        next += u64::from(le32(domain(i) + 20).min(np));
    }
    if next != u64::from(np) {
        return Err("page slices do not tile the list");
    }
    let slice_ok = |first: u32, nr: u32| -> Result<(), &'static str> {
        if first > np || nr > np - first {
            return Err("page slice out of range");
        }
        for i in 0..nr {
            let p = page(first + i);
            if p == 0 || p & !(!0u64 << 12) != 0 {
                return Err("unaligned page");
            }
            if i != 0 && p <= page(first + i - 1) {
                return Err("pages not sorted");
            }
        }
        Ok(())
    };
    for i in 0..nu {
        slice_ok(le32(unit(i) + 16), le32(unit(i) + 20))?;
        if le64(unit(i) + 8) & !(!0u64 << 12) != 0 {
            return Err("unaligned root");
        }
    }
    for i in 0..nd {
        let d = domain(i);
        let (top, first, nr) = (le64(d + 8), le32(d + 16), le32(d + 20));
        slice_ok(first, nr)?;
        if nr == 0
            || le64(d) == 0
            || blob[d + 30] != 0
            || blob[d + 31] != 0
            || blob[d + 29] & !1 != 0
        {
            return Err("bad domain record");
        }
        if le16(d + 24) != 0xffff && u32::from(le16(d + 24)) >= nu {
            return Err("domain names no unit");
        }
        if !(first..first + nr).any(|k| page(k) == top) {
            return Err("top table not in the page list");
        }
    }
    for i in 0..nv {
        let v = device(i);
        if u32::from(le16(v + 4)) >= nd || le16(v + 6) != 0 {
            return Err("bad device record");
        }
        if u32::from(le16(domain(u32::from(le16(v + 4))) + 24)) >= nu {
            return Err("device's domain has no unit");
        }
    }
    for i in 0..nd {
        for j in 0..i {
            if le64(domain(i)) == le64(domain(j)) {
                return Err("two domains with one token");
            }
        }
    }
    let mut all: Vec<u64> = (0..np).map(page).collect();
    all.extend((0..nu).map(|i| le64(unit(i) + 8)));
    all.sort();
    if all.windows(2).any(|w| w[0] == w[1]) {
        return Err("a page is handed over twice");
    }
    Ok(())
}

/// Every accessor of a parsed blob answers in bounds, `None` past the
/// ends, and the view keeps the rules.
fn view_in_bounds(p: &Parsed<'_>) {
    let l = p.layout();
    assert_eq!(l.units as usize, HEADER);
    assert_eq!(l.domains as usize, HEADER + UNIT * l.nr_units as usize);
    assert_eq!(l.devices, l.domains + DOMAIN as u32 * l.nr_domains);
    assert_eq!(l.pages, l.devices + DEVICE as u32 * l.nr_devices);
    assert_eq!(
        l.pages as usize + PAGE * l.nr_pages as usize,
        p.blob().len()
    );
    for i in 0..p.nr_pages() {
        let a = p.page(i).unwrap();
        assert!(a != 0 && a % 4096 == 0);
    }
    for i in 0..p.nr_units() {
        let u = p.unit(i).unwrap();
        assert!(u64::from(u.first_page) + u64::from(u.nr_pages) <= u64::from(p.nr_pages()));
        assert_eq!(u.root_phys % 4096, 0);
        assert!(p.unit_by_reg(u.reg_phys).is_some_and(|(j, _)| j <= i));
    }
    for i in 0..p.nr_domains() {
        let d = p.domain(i).unwrap();
        assert!(d.nr_pages > 0 && d.token != 0);
        let at = p
            .find_in_slice(d.first_page, d.nr_pages, d.top_phys)
            .unwrap();
        assert_eq!(p.page(at), Some(d.top_phys));
        // (quadratic: on small blobs)
        if p.nr_domains() <= 64 {
            assert_eq!(p.domain_by_token(d.token), Some((i, d)));
        }
        assert!(d.unit == NO_UNIT || u32::from(d.unit) < p.nr_units());
    }
    for i in 0..p.nr_devices() {
        let v = p.device(i).unwrap();
        let d = p.domain(u32::from(v.domain)).unwrap();
        assert!(p.unit(u32::from(d.unit)).is_some());
    }
    for n in [0, 1, 1000, u32::MAX] {
        assert!(p.unit(p.nr_units().saturating_add(n)).is_none());
        assert!(p.domain(p.nr_domains().saturating_add(n)).is_none());
        assert!(p.device(p.nr_devices().saturating_add(n)).is_none());
        assert!(p.page(p.nr_pages().saturating_add(n)).is_none());
    }
    assert!(p.find_in_slice(u32::MAX, u32::MAX, 0).is_none());
    assert!(p
        .find_in_slice(0, p.nr_pages().saturating_add(1), 0)
        .is_none());
}

/// One change to a blob: the kinds of damage that reach past the
/// checksum when resealed (equal values, boundary values, a record's
/// field set to another record's).
#[derive(Debug, Clone)]
enum Damage {
    Xor(Index, u8),
    /// A 1, 2, 4 or 8 byte field at an aligned offset set to a value.
    Set(Index, u8, Value),
    /// An aligned u64 copied over another.
    Copy(Index, Index),
    Truncate(Index),
    Extend(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Value {
    Fixed(u64),
    Plus(i8),
    FromBlob(Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    let value = prop_oneof![
        prop::sample::select(vec![
            0u64,
            1,
            2,
            0xfff,
            0x1000,
            0xfffe,
            0xffff,
            64,
            65,
            4096,
            4097,
            1 << 22,
            u64::from(u32::MAX),
            u64::MAX,
        ])
        .prop_map(Value::Fixed),
        any::<i8>().prop_map(Value::Plus),
        any::<Index>().prop_map(Value::FromBlob),
    ];
    // Mostly changes in place: a length change stops at the header.
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Damage::Xor(i, x)),
        6 => (any::<Index>(), 0u8..4, value).prop_map(|(i, w, v)| Damage::Set(i, w, v)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Damage::Copy(a, b)),
        1 => any::<Index>().prop_map(Damage::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..24).prop_map(Damage::Extend),
    ]
}

fn apply(buf: &mut Vec<u8>, d: &Damage) {
    let words = buf.len() / 8;
    match d {
        Damage::Xor(i, x) => {
            let at = i.index(buf.len());
            buf[at] ^= x;
        }
        Damage::Set(i, w, v) => {
            let w = 1usize << w;
            if buf.len() < w || (words == 0 && matches!(v, Value::FromBlob(_))) {
                return;
            }
            let at = i.index(buf.len() / w) * w;
            let mut cur = [0u8; 8];
            cur[..w].copy_from_slice(&buf[at..at + w]);
            let cur = u64::from_le_bytes(cur);
            let v = match v {
                Value::Fixed(x) => *x,
                Value::Plus(d) => cur.wrapping_add(i64::from(*d) as u64),
                Value::FromBlob(j) => {
                    let j = j.index(words) * 8;
                    u64::from_le_bytes(buf[j..j + 8].try_into().unwrap())
                }
            };
            buf[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
        }
        Damage::Copy(_, _) if words == 0 => {}
        Damage::Copy(a, b) => {
            let (a, b) = (a.index(words) * 8, b.index(words) * 8);
            let w: [u8; 8] = buf[a..a + 8].try_into().unwrap();
            buf[b..b + 8].copy_from_slice(&w);
        }
        Damage::Truncate(i) => {
            let n = i.index(buf.len());
            buf.truncate(n);
        }
        Damage::Extend(x) => buf.extend(x),
    }
}

/// A change to valid contents, at the record level (so that the encoder
/// sees it): what an encoder bug or a corrupted outgoing state could give.
fn mutate(c: &mut Contents, kind: u8, a: Index, b: Index, v: u64) {
    let (nu, nd, nv, np) = (
        c.units.len(),
        c.domains.len(),
        c.devices.len(),
        c.pages.len(),
    );
    let page = |c: &Contents, x: Index| {
        if np == 0 {
            v << 12
        } else {
            c.pages[x.index(np)]
        }
    };
    match kind % 16 {
        0 if nu > 0 => c.units[a.index(nu)].root_phys = page(c, b),
        1 if nu > 0 => c.units[a.index(nu)].root_phys ^= v & 0xfff,
        2 if nu > 0 => c.units[a.index(nu)].nr_pages ^= (v & 3) as u32,
        3 if nd > 0 => {
            c.domains[a.index(nd)].token = if v & 1 == 0 {
                0
            } else {
                c.domains[b.index(nd)].token
            }
        }
        4 if nd > 0 => c.domains[a.index(nd)].top_phys = page(c, b),
        5 if nd > 0 => {
            // nu and nu + 1 name no unit; NO_UNIT is allowed
            let x = v as u16 % (nu as u16 + 3);
            c.domains[a.index(nd)].unit = if x == nu as u16 + 2 { NO_UNIT } else { x };
        }
        6 if nd > 0 => c.domains[a.index(nd)].flags = v as u8,
        7 if nd > 0 => c.domains[a.index(nd)].reserved[v as usize & 1] = 1 | v as u8,
        8 if nd > 0 => c.domains[a.index(nd)].nr_pages ^= (v & 3) as u32,
        9 if nd > 0 => c.domains[a.index(nd)].first_page ^= (v & 3) as u32,
        10 if nv > 0 => c.devices[a.index(nv)].domain = v as u16 % (nd as u16 + 1),
        11 if nv > 0 => c.devices[a.index(nv)].reserved = v as u16,
        12 if np > 0 => c.pages[a.index(np)] = page(c, b),
        13 if np > 0 => c.pages.swap(a.index(np), b.index(np)),
        14 if np > 0 => c.pages[a.index(np)] ^= v & 0xfff,
        15 if np > 0 => c.pages[a.index(np)] = 0,
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Valid contents encode to exactly the independent writer's bytes,
    /// parse (also by the C model) and decode to themselves.
    #[test]
    fn roundtrip(c in contents()) {
        let buf = enc(&c);
        prop_assert_eq!(&buf, &raw(&c));
        prop_assert_eq!(c_parse(&buf), Ok(()));
        let mut scratch = c.scratch();
        let p = parse(&buf, CRC, &mut scratch).map_err(|e| TestCaseError::fail(e.to_string()))?;
        view_in_bounds(&p);
        prop_assert_eq!(p.nr_units() as usize, c.units.len());
        prop_assert_eq!(p.nr_domains() as usize, c.domains.len());
        prop_assert_eq!(p.nr_devices() as usize, c.devices.len());
        prop_assert_eq!(p.nr_pages() as usize, c.pages.len());
        for (i, u) in c.units.iter().enumerate() {
            prop_assert_eq!(p.unit(i as u32), Some(*u));
        }
        for (i, d) in c.domains.iter().enumerate() {
            prop_assert_eq!(p.domain(i as u32), Some(*d));
        }
        for (i, v) in c.devices.iter().enumerate() {
            prop_assert_eq!(p.device(i as u32), Some(*v));
        }
        for (i, a) in c.pages.iter().enumerate() {
            prop_assert_eq!(p.page(i as u32), Some(*a));
        }
        // A page of one domain is not found in another's slice.
        for d in &c.domains {
            for e in &c.domains {
                let found = p.find_in_slice(d.first_page, d.nr_pages, e.top_phys).is_some();
                prop_assert_eq!(found, d == e);
            }
        }
    }

    /// Damage is refused or decodes in bounds, never panics, and gets the
    /// C parser's answer; without a reseal it never passes.
    #[test]
    fn damage_never_panics(
        c in contents(),
        damages in prop::collection::vec(damage(), 1..4),
        reseal_it in any::<bool>(),
    ) {
        let good = enc(&c);
        let mut buf = good.clone();
        for d in &damages {
            if !buf.is_empty() {
                apply(&mut buf, d);
            }
        }
        prop_assume!(buf != good);
        if reseal_it {
            reseal(&mut buf);
        }
        let got = check(&buf);
        prop_assert_eq!(got, c_parse(&buf));
        if got.is_ok() {
            prop_assert!(reseal_it, "a damaged blob passed its checksum");
        }
    }

    /// Records changed before encoding: the encoder refuses exactly what
    /// the C parser refuses in the unchecked blob, with its reason, and
    /// leaves nothing behind; what it accepts parses.
    #[test]
    fn encoder_refuses_what_the_parser_refuses(
        c in contents(),
        changes in prop::collection::vec((any::<u8>(), any::<Index>(), any::<Index>(), any::<u64>()), 1..3),
    ) {
        let mut c = c;
        for &(kind, a, b, v) in &changes {
            mutate(&mut c, kind, a, b, v);
        }
        let want = c_parse(&raw(&c));
        let mut out = vec![0xa5u8; c.len() + 16];
        let got = encode(&mut out, &c.units, &c.domains, &c.devices, &c.pages, CRC, &mut c.scratch());
        match got {
            Ok(n) => {
                prop_assert_eq!(want, Ok(()));
                prop_assert_eq!(&out[..n], &raw(&c)[..]);
                prop_assert!(out[n..].iter().all(|&x| x == 0xa5));
            }
            Err(e) => {
                prop_assert_eq!(want, Err(e.as_str()));
                prop_assert!(out[..c.len()].iter().all(|&x| x == 0));
            }
        }
    }

    /// Arbitrary bytes; and arbitrary bodies behind a header that is
    /// consistent and sealed, so that the record checks are reached.
    #[test]
    fn random_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        counts in (0u32..4, 0u32..4, 0u32..4, 0u32..8),
        small in prop::collection::vec(0u8..4, 0..400),
    ) {
        prop_assert_eq!(check(&bytes), c_parse(&bytes));
        let (nu, nd, nv, np) = counts;
        let len = blob_len(nu as usize, nd as usize, nv as usize, np as usize).unwrap();
        let mut buf = vec![0u8; len];
        // Small byte values make equal fields, zero reserved bytes and
        // in-range indices likely.
        for (i, b) in buf.iter_mut().enumerate().skip(HEADER) {
            *b = small.get(i).copied().unwrap_or(0);
        }
        buf[..8].copy_from_slice(&MAGIC.to_le_bytes());
        for (k, v) in [VERSION, len as u32, nu, nd, nv, np].into_iter().enumerate() {
            buf[8 + 4 * k..12 + 4 * k].copy_from_slice(&v.to_le_bytes());
        }
        reseal(&mut buf);
        prop_assert_eq!(check(&buf), c_parse(&buf));
    }
}

/// Two units, three domains (one without a unit), three devices:
///
/// ```text
/// pages: 0 0x5000 1 0x9000 (unit 0) | 2 0x7000 (unit 1)
///        3 0x1000 4 0x8000 (domain 0, top 0x8000)
///        5 0xa000 6 0xb000 7 0xc000 (domain 1, top 0xa000)
///        8 0xd000 (domain 2, top 0xd000, no unit)
/// ```
fn fixture() -> Contents {
    let d = |token, top_phys, first_page, nr_pages, unit, flags| Domain {
        token,
        top_phys,
        first_page,
        nr_pages,
        unit,
        did: 2 + token as u16,
        aw: 2,
        flags,
        reserved: [0; 2],
    };
    let v = |segment, bus, devfn, domain| Device {
        segment,
        bus,
        devfn,
        domain,
        reserved: 0,
    };
    Contents {
        units: vec![
            Unit {
                reg_phys: 0xfed9_0000,
                root_phys: 0x10_0000,
                first_page: 0,
                nr_pages: 2,
            },
            Unit {
                reg_phys: 0xfed9_1000,
                root_phys: 0x20_0000,
                first_page: 2,
                nr_pages: 1,
            },
        ],
        domains: vec![
            d(0x11, 0x8000, 3, 2, 0, 0),
            d(0x22, 0xa000, 5, 3, 1, DOMAIN_INCOHERENT),
            d(0x33, 0xd000, 8, 1, NO_UNIT, 0),
        ],
        devices: vec![v(0, 0, 0x18, 0), v(0, 3, 0, 1), v(1, 0, 8, 0)],
        pages: vec![
            0x5000, 0x9000, 0x7000, 0x1000, 0x8000, 0xa000, 0xb000, 0xc000, 0xd000,
        ],
    }
}

// Byte offsets in the fixture's blob.
const fn uo(i: usize) -> usize {
    HEADER + i * UNIT
}
const fn dom(i: usize) -> usize {
    uo(2) + i * DOMAIN
}
const fn dev(i: usize) -> usize {
    dom(3) + i * DEVICE
}
const fn pg(i: usize) -> usize {
    dev(3) + i * PAGE
}

fn set(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

fn set32(b: &mut [u8], off: usize, v: u32) {
    set(b, off, &v.to_le_bytes());
}

fn set64(b: &mut [u8], off: usize, v: u64) {
    set(b, off, &v.to_le_bytes());
}

fn parse_fixture(b: &[u8]) -> Result<(), VtdRefusal> {
    let mut scratch = vec![0u64; 11];
    parse(b, CRC, &mut scratch).map(|_| ())
}

/// Every reason is reached by one targeted change (resealed unless the
/// change is to the header before the checksum or is the checksum), with
/// the C parser agreeing on the reason.
#[test]
fn each_reason_refused() {
    use VtdRefusal::*;
    let good = enc(&fixture());
    assert_eq!(good.len(), pg(9));
    assert_eq!(parse_fixture(&good), Ok(()));
    type Change = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Change, VtdRefusal)> = vec![
        ("short header", |b| b.truncate(HEADER - 1), Truncated),
        ("empty", |b| b.clear(), Truncated),
        ("magic", |b| b[7] ^= 0x80, BadMagic),
        ("version", |b| set32(b, 8, 2), BadVersion),
        (
            "length field",
            |b| set32(b, 12, pg(10) as u32),
            LengthMismatch,
        ),
        ("blob extended", |b| b.extend([0; 8]), LengthMismatch),
        ("blob cut", |b| b.truncate(pg(8)), LengthMismatch),
        ("flags", |b| set32(b, 32, 1), UnknownFlags),
        ("units", |b| set32(b, 16, MAX_UNITS + 1), TooManyRecords),
        ("domains", |b| set32(b, 20, MAX_DOMAINS + 1), TooManyRecords),
        ("devices", |b| set32(b, 24, MAX_DEVICES + 1), TooManyRecords),
        ("pages", |b| set32(b, 28, MAX_PAGES + 1), TooManyRecords),
        ("a device more", |b| set32(b, 24, 4), CountsMismatch),
        (
            "a page more, length too",
            |b| {
                b.extend(0xe000u64.to_le_bytes());
                set32(b, 12, pg(10) as u32);
            },
            CountsMismatch,
        ),
        ("body bit", |b| b[pg(4)] ^= 1, BadChecksum),
        ("crc bit", |b| b[CRC_OFFSET] ^= 1, BadChecksum),
        ("unit 1 first", |b| set32(b, uo(1) + 16, 3), SlicesDoNotTile),
        ("unit 0 short", |b| set32(b, uo(0) + 20, 1), SlicesDoNotTile),
        (
            "domain 0 first",
            |b| set32(b, dom(0) + 16, 0),
            SlicesDoNotTile,
        ),
        (
            "domain 2 long",
            |b| set32(b, dom(2) + 20, 2),
            SlicesDoNotTile,
        ),
        (
            "domain 2 empty",
            |b| set32(b, dom(2) + 20, 0),
            SlicesDoNotTile,
        ),
        ("page 0 zero", |b| set64(b, pg(0), 0), UnalignedPage),
        (
            "page 3 unaligned",
            |b| set64(b, pg(3), 0x1001),
            UnalignedPage,
        ),
        (
            "page 8 unaligned",
            |b| set64(b, pg(8), 0xd800),
            UnalignedPage,
        ),
        (
            "unit 0 swapped",
            |b| {
                set64(b, pg(0), 0x9000);
                set64(b, pg(1), 0x5000);
            },
            PagesNotSorted,
        ),
        (
            "domain 1 repeats",
            |b| set64(b, pg(6), 0xa000),
            PagesNotSorted,
        ),
        (
            "root unaligned",
            |b| set64(b, uo(1) + 8, 0x20_0008),
            UnalignedRoot,
        ),
        ("token 0", |b| set64(b, dom(0), 0), BadDomain),
        ("flags 2", |b| b[dom(1) + 29] = 2, BadDomain),
        ("flags 3", |b| b[dom(1) + 29] = 3, BadDomain),
        ("reserved 0", |b| b[dom(0) + 30] = 1, BadDomain),
        ("reserved 1", |b| b[dom(2) + 31] = 0x80, BadDomain),
        (
            "no pages",
            |b| {
                // Domain 1 takes domain 0's pages (still sorted).
                set32(b, dom(0) + 20, 0);
                set32(b, dom(1) + 16, 3);
                set32(b, dom(1) + 20, 5);
            },
            BadDomain,
        ),
        (
            "unit 2",
            |b| set(b, dom(0) + 24, &2u16.to_le_bytes()),
            DomainNoUnit,
        ),
        (
            "unit 0xfffe",
            |b| set(b, dom(2) + 24, &0xfffeu16.to_le_bytes()),
            DomainNoUnit,
        ),
        (
            "top elsewhere",
            |b| set64(b, dom(0) + 8, 0xa000),
            TopNotListed,
        ),
        ("top off", |b| set64(b, dom(0) + 8, 0x8001), TopNotListed),
        ("top 0", |b| set64(b, dom(2) + 8, 0), TopNotListed),
        (
            "device domain 3",
            |b| set(b, dev(0) + 4, &3u16.to_le_bytes()),
            BadDevice,
        ),
        (
            "device domain 0xffff",
            |b| set(b, dev(2) + 4, &[0xff, 0xff]),
            BadDevice,
        ),
        (
            "device reserved",
            |b| set(b, dev(1) + 6, &[0, 1]),
            BadDevice,
        ),
        (
            "device on domain 2",
            |b| set(b, dev(0) + 4, &2u16.to_le_bytes()),
            DeviceDomainNoUnit,
        ),
        (
            "domain 0 loses its unit",
            |b| set(b, dom(0) + 24, &NO_UNIT.to_le_bytes()),
            DeviceDomainNoUnit,
        ),
        ("tokens", |b| set64(b, dom(2), 0x11), DuplicateToken),
        ("roots", |b| set64(b, uo(1) + 8, 0x10_0000), PageTwice),
        ("root is a page", |b| set64(b, uo(0) + 8, 0xd000), PageTwice),
        ("page in two slices", |b| set64(b, pg(3), 0x5000), PageTwice),
        // The C order: header before the checksum, tiling before the
        // slices' pages, tokens before pages.
        ("flags, not resealed", |b| set32(b, 32, 4), UnknownFlags),
        (
            "tiling before pages",
            |b| {
                set64(b, pg(0), 1);
                set32(b, uo(1) + 16, 3);
            },
            SlicesDoNotTile,
        ),
        (
            "tokens before pages",
            |b| {
                set64(b, dom(2), 0x11);
                set64(b, uo(1) + 8, 0x10_0000);
            },
            DuplicateToken,
        ),
        (
            "devices before tokens",
            |b| {
                set64(b, dom(2), 0x11);
                set(b, dev(1) + 6, &[0, 1]);
            },
            BadDevice,
        ),
    ];
    let no_reseal = ["crc bit", "body bit", "flags, not resealed", "magic"];
    let mut reached = std::collections::BTreeSet::new();
    for (what, change, want) in cases {
        let mut b = good.clone();
        change(&mut b);
        if !no_reseal.contains(&what) {
            reseal(&mut b);
        }
        let mut scratch = vec![0u64; b.len() / 8];
        let got = parse(&b, CRC, &mut scratch).map(|_| ());
        assert_eq!(got, Err(want), "{what}");
        assert_eq!(c_parse(&b), Err(want.as_str()), "{what}: the C model");
        reached.insert(want.as_str());
    }
    // A slice longer than pages[] (the C clamps it in the tiling sum):
    // one unit whose context tables are the whole list.
    let one = Contents {
        units: vec![Unit {
            reg_phys: 1,
            root_phys: 0x1000,
            first_page: 0,
            nr_pages: 1,
        }],
        pages: vec![0x2000],
        ..Contents::default()
    };
    for nr in [2, u32::MAX] {
        let mut b = enc(&one);
        set32(&mut b, uo(0) + 20, nr);
        reseal(&mut b);
        assert_eq!(
            parse(&b, CRC, &mut [0; 2]).map(|_| ()),
            Err(SliceOutOfRange)
        );
        assert_eq!(c_parse(&b), Err(SliceOutOfRange.as_str()));
        reached.insert(SliceOutOfRange.as_str());
    }
    // Scratch: the caller's bug, reported only for blobs that pass the
    // checks before its use.
    assert_eq!(
        parse(&good, CRC, &mut [0; 10]).map(|_| ()),
        Err(ScratchTooSmall)
    );
    assert_eq!(parse(&good, CRC, &mut []).map(|_| ()), Err(ScratchTooSmall));
    assert_eq!(
        parse(&good[..HEADER - 1], CRC, &mut []).map(|_| ()),
        Err(Truncated)
    );
    reached.insert(ScratchTooSmall.as_str());
    // Every parse reason (all but the encoder's OutputTooSmall).
    assert_eq!(reached.len(), 21, "{reached:?}");
}

/// The texts the kernel logs and the guest tests grep.
#[test]
fn reason_texts() {
    use VtdRefusal::*;
    let all = [
        Truncated,
        BadMagic,
        BadVersion,
        LengthMismatch,
        UnknownFlags,
        TooManyRecords,
        CountsMismatch,
        BadChecksum,
        SlicesDoNotTile,
        SliceOutOfRange,
        UnalignedPage,
        PagesNotSorted,
        UnalignedRoot,
        BadDomain,
        DomainNoUnit,
        TopNotListed,
        BadDevice,
        DeviceDomainNoUnit,
        DuplicateToken,
        PageTwice,
        ScratchTooSmall,
        OutputTooSmall,
    ];
    let texts: std::collections::BTreeSet<&str> = all.iter().map(|r| r.as_str()).collect();
    assert_eq!(texts.len(), all.len(), "distinct texts");
    for r in all {
        assert_eq!(r.to_string(), r.as_str());
        assert!(r.as_str().len() < REASON_LEN, "{r}");
    }
    assert_eq!(BadVersion.to_string(), "unsupported version");
    assert_eq!(PageTwice.to_string(), "a page is handed over twice");
    assert_eq!(
        DeviceDomainNoUnit.to_string(),
        "device's domain has no unit"
    );
    assert_eq!(CountsMismatch.as_str(), "counts do not match the length");
}

/// The edge cases kept from the C: a domain may have no unit (and then
/// no device); a root table at 0 passes (only its alignment is checked);
/// a unit may have no context tables; records may be empty.
#[test]
fn c_edges_accepted() {
    let mut c = fixture();
    c.units[0].root_phys = 0;
    let b = enc(&c);
    assert_eq!(parse_fixture(&b), Ok(()));
    let empty = Contents::default();
    let b = enc(&empty);
    assert_eq!(b.len(), HEADER);
    assert_eq!(parse(&b, CRC, &mut []).map(|p| p.nr_pages()), Ok(0));
    let c = Contents {
        units: vec![Unit {
            reg_phys: 0,
            root_phys: 0x1000,
            first_page: 0,
            nr_pages: 0,
        }],
        domains: vec![Domain {
            token: u64::MAX,
            top_phys: 0x2000,
            first_page: 0,
            nr_pages: 1,
            unit: NO_UNIT,
            ..Domain::default()
        }],
        pages: vec![0x2000],
        ..Contents::default()
    };
    let b = enc(&c);
    let mut scratch = c.scratch();
    let p = parse(&b, CRC, &mut scratch).unwrap();
    assert_eq!(p.domain_by_token(u64::MAX).map(|x| x.0), Some(0));
    assert_eq!(p.unit_by_reg(0).map(|x| x.0), Some(0));
    assert_eq!(p.domain_by_token(1), None);
    // Duplicate devices and units with one register base pass, as in C.
    let mut c = fixture();
    c.devices.push(c.devices[0]);
    c.units[1].reg_phys = c.units[0].reg_phys;
    let b = enc(&c);
    let mut scratch = c.scratch();
    let p = parse(&b, CRC, &mut scratch).unwrap();
    assert_eq!(p.unit_by_reg(0xfed9_0000).map(|x| x.0), Some(0));
}

/// The encoder refuses invalid records with the parser's reason and
/// zeroes its output; and its own limits.
#[test]
fn encoder_refusals() {
    use VtdRefusal::*;
    let try_enc = |c: &Contents| -> Result<usize, VtdRefusal> {
        let mut out = vec![0xffu8; c.len()];
        let r = encode(
            &mut out,
            &c.units,
            &c.domains,
            &c.devices,
            &c.pages,
            CRC,
            &mut c.scratch(),
        );
        if r.is_err() {
            assert!(out.iter().all(|&x| x == 0));
        }
        r
    };
    type Change = fn(&mut Contents);
    let cases: Vec<(Change, VtdRefusal)> = vec![
        (|c| c.pages.swap(0, 1), PagesNotSorted),
        (|c| c.pages[6] = 0xa000, PagesNotSorted),
        (|c| c.pages[3] = 0x5000, PageTwice),
        (|c| c.units[1].root_phys = c.units[0].root_phys, PageTwice),
        (|c| c.domains[1].token = 0, BadDomain),
        (|c| c.domains[1].token = 0x11, DuplicateToken),
        (|c| c.domains[0].reserved = [0, 1], BadDomain),
        (|c| c.domains[0].nr_pages = 0, SlicesDoNotTile),
        (|c| c.domains[0].top_phys = 0xa000, TopNotListed),
        (|c| c.devices[2].domain = 2, DeviceDomainNoUnit),
        (|c| c.devices[2].reserved = 1, BadDevice),
        (|c| c.pages[4] = 0x8010, UnalignedPage),
        (|c| c.units[0].root_phys = 0x10_0100, UnalignedRoot),
    ];
    for (change, want) in cases {
        let mut c = fixture();
        change(&mut c);
        assert_eq!(try_enc(&c), Err(want), "{want}");
    }
    let c = fixture();
    assert_eq!(try_enc(&c), Ok(pg(9)));
    let run = |out: &mut [u8], scratch: &mut [u64], crc: &dyn Fn(u32, &[u8]) -> u32| {
        encode(
            out, &c.units, &c.domains, &c.devices, &c.pages, crc, scratch,
        )
    };
    let mut out = vec![0u8; pg(9)];
    assert_eq!(
        run(&mut out[..pg(9) - 1], &mut [0; 11], CRC),
        Err(OutputTooSmall)
    );
    assert_eq!(run(&mut out, &mut [0; 10], CRC), Err(ScratchTooSmall));
    // A checksum that does not chain (ignores its seed) would write a
    // blob the next kernel refuses: caught.
    let flat = |_: u32, d: &[u8]| kcrc(0, d);
    assert_eq!(run(&mut out, &mut [0; 11], &flat), Err(BadChecksum));
    assert!(out.iter().all(|&x| x == 0));
    // Over the limits.
    let many = vec![Unit::default(); MAX_UNITS as usize + 1];
    assert_eq!(
        encode(&mut out, &many, &[], &[], &[], CRC, &mut []),
        Err(TooManyRecords)
    );
    let pages = vec![0u64; MAX_PAGES as usize + 1];
    assert_eq!(
        encode(&mut out, &[], &[], &[], &pages, CRC, &mut []),
        Err(TooManyRecords)
    );
}

#[test]
fn blob_len_limits() {
    let (u, d, v, p) = (
        MAX_UNITS as usize,
        MAX_DOMAINS as usize,
        MAX_DEVICES as usize,
        MAX_PAGES as usize,
    );
    assert_eq!(blob_len(0, 0, 0, 0), Some(HEADER));
    assert_eq!(
        blob_len(u, d, v, p),
        Some(40 + 24 * u + 32 * d + 8 * v + 8 * p)
    );
    assert!(blob_len(u, d, v, p) <= Some(u32::MAX as usize));
    assert_eq!(blob_len(u + 1, 0, 0, 0), None);
    assert_eq!(blob_len(0, d + 1, 0, 0), None);
    assert_eq!(blob_len(0, 0, v + 1, 0), None);
    assert_eq!(blob_len(0, 0, 0, p + 1), None);
    assert_eq!(blob_len(usize::MAX, 0, 0, 0), None);
    assert_eq!(scratch_len(usize::MAX, 1), usize::MAX);
}

/// Full record tables: 64 units, 4096 domains, 4096 devices.
#[test]
fn full_tables() {
    let mut c = Contents::default();
    for i in 0..u64::from(MAX_UNITS) {
        c.units.push(Unit {
            reg_phys: 0xfed0_0000 + (i << 12),
            root_phys: (1 << 30) + (i << 12),
            first_page: i as u32,
            nr_pages: 1,
        });
        c.pages.push((1 << 31) + (i << 12));
    }
    for i in 0..u64::from(MAX_DOMAINS) {
        let top = (1 << 32) + (i << 12);
        c.domains.push(Domain {
            token: i + 1,
            top_phys: top,
            first_page: c.pages.len() as u32,
            nr_pages: 1,
            unit: (i % 64) as u16,
            did: i as u16,
            aw: 2,
            flags: 0,
            reserved: [0; 2],
        });
        c.pages.push(top);
    }
    for i in 0..MAX_DEVICES as u16 {
        c.devices.push(Device {
            segment: 0,
            bus: (i >> 8) as u8,
            devfn: i as u8,
            domain: i,
            reserved: 0,
        });
    }
    let b = enc(&c);
    assert_eq!(c_parse(&b), Ok(()));
    let mut scratch = c.scratch();
    let p = parse(&b, CRC, &mut scratch).unwrap();
    view_in_bounds(&p);
    assert_eq!(p.domain_by_token(4096).map(|x| x.0), Some(4095));
    // The last token repeated is found by the sort-based check.
    let mut c2 = c.clone();
    c2.domains[4095].token = 1;
    let mut out = vec![0; c2.len()];
    assert_eq!(
        encode(
            &mut out,
            &c2.units,
            &c2.domains,
            &c2.devices,
            &c2.pages,
            CRC,
            &mut scratch
        ),
        Err(VtdRefusal::DuplicateToken)
    );
}
