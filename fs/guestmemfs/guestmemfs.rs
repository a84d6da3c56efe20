// SPDX-License-Identifier: GPL-2.0-only

//! guestmemfs: a memory filesystem for guest RAM that survives kexec.
//!
//! The filesystem type is registered through the C glue in `vfs_glue.c`
//! because Linux 7.3 has no Rust abstraction for `struct file_system_type`.

use kernel::prelude::*;

module! {
    type: GuestMemFs,
    name: "guestmemfs",
    authors: ["guestmemfs project"],
    description: "Persistent memory filesystem for guest RAM",
    license: "GPL",
}

extern "C" {
    fn guestmemfs_vfs_register() -> kernel::ffi::c_int;
}

struct GuestMemFs;

impl kernel::Module for GuestMemFs {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: `guestmemfs_vfs_register` registers a static
        // `file_system_type` and is called once, from this initcall.
        kernel::error::to_result(unsafe { guestmemfs_vfs_register() })?;
        pr_info!("filesystem type registered\n");
        Ok(GuestMemFs)
    }
}
