// SPDX-License-Identifier: GPL-2.0-only
//! Host build of the iommufd live update format crate.
//!
//! The code lives in `src/shared/`, which the kernel will compile into
//! iommufd with `#[path]` from the same files; this root only adds
//! `no_std` for the host, where unit and property tests run.
#![no_std]

#[path = "shared/mod.rs"]
mod shared;

pub use shared::*;
