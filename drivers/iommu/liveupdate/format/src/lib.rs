// SPDX-License-Identifier: GPL-2.0-only
//! Host build of the iommufd live update format crate: the iommufd file
//! blob and restore check (crate root), and the Intel VT-d driver's
//! handover blob ([`vtd`]).
//!
//! The code lives in `src/shared/`, which the kernel compiles with
//! `#[path]` from the same files: `mod.rs` into iommufd (`lu_rs.rs`),
//! `vtd.rs` alone into the VT-d driver (`lu_vtd_rs.rs`), so each object
//! carries only its half. This root only adds `no_std` for the host,
//! where unit and property tests run.
#![no_std]

#[path = "shared/mod.rs"]
mod shared;

pub use shared::*;

#[path = "shared/vtd.rs"]
pub mod vtd;
