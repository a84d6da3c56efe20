// SPDX-License-Identifier: GPL-2.0-only
//! Userspace side of the Live Update Orchestrator, `/dev/liveupdate`
//! (`include/uapi/linux/liveupdate.h` in Linux 7.3).
//!
//! A session is a file descriptor; files preserved in it survive a kexec
//! as long as the session fd is still open when the kexec happens, and are
//! retrieved by token in the next kernel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const DEVICE: &str = "/dev/liveupdate";
/// Session names are at most 63 bytes plus the terminating NUL.
pub const SESSION_NAME_LENGTH: usize = 64;

const IOCTL_TYPE: u64 = 0xBA;
/// `_IO(LIVEUPDATE_IOCTL_TYPE, nr)`: the uapi encodes no size, the structs
/// carry their own `size` field.
const fn io(nr: u64) -> u64 {
    (IOCTL_TYPE << 8) | nr
}
const IOCTL_CREATE_SESSION: u64 = io(0x00);
const IOCTL_RETRIEVE_SESSION: u64 = io(0x01);
const SESSION_PRESERVE_FD: u64 = io(0x40);
const SESSION_RETRIEVE_FD: u64 = io(0x41);
const SESSION_FINISH: u64 = io(0x42);

#[repr(C)]
struct SessionArg {
    size: u32,
    fd: i32,
    name: [u8; SESSION_NAME_LENGTH],
}

#[repr(C)]
struct FdArg {
    size: u32,
    fd: i32,
    token: u64,
}

#[repr(C)]
struct FinishArg {
    size: u32,
    reserved: u32,
}

/// Errors from the liveupdate ioctls, named after the failing operation.
#[derive(Debug)]
pub enum Error {
    Open(io::Error),
    SessionName(String),
    CreateSession(io::Error),
    RetrieveSession(io::Error),
    PreserveFd(io::Error),
    RetrieveFd(io::Error),
    Finish(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Open(e) => write!(f, "open {DEVICE}: {e}"),
            Error::SessionName(n) => write!(f, "invalid session name {n:?}"),
            Error::CreateSession(e) => write!(f, "LIVEUPDATE_IOCTL_CREATE_SESSION: {e}"),
            Error::RetrieveSession(e) => write!(f, "LIVEUPDATE_IOCTL_RETRIEVE_SESSION: {e}"),
            Error::PreserveFd(e) => write!(f, "LIVEUPDATE_SESSION_PRESERVE_FD: {e}"),
            Error::RetrieveFd(e) => write!(f, "LIVEUPDATE_SESSION_RETRIEVE_FD: {e}"),
            Error::Finish(e) => write!(f, "LIVEUPDATE_SESSION_FINISH: {e}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// An open `/dev/liveupdate`.
pub struct LiveUpdate {
    dev: File,
}

/// A LUO session. Dropping it closes the fd, which unpreserves its files
/// unless a kexec already happened.
pub struct Session {
    fd: OwnedFd,
}

fn ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a live, exclusively borrowed `#[repr(C)]` struct of
    // the layout the kernel expects for `request`.
    let rc = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn name_bytes(name: &str) -> Result<[u8; SESSION_NAME_LENGTH]> {
    if name.is_empty() || name.len() >= SESSION_NAME_LENGTH || name.contains('\0') {
        return Err(Error::SessionName(name.to_owned()));
    }
    let mut out = [0u8; SESSION_NAME_LENGTH];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// Takes ownership of an fd the kernel just installed for us.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: the ioctl succeeded and returned a new fd that nothing else
    // owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl LiveUpdate {
    pub fn open() -> Result<Self> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE)
            .map_err(Error::Open)?;
        Ok(LiveUpdate { dev })
    }

    pub fn create_session(&self, name: &str) -> Result<Session> {
        let mut arg = SessionArg {
            size: std::mem::size_of::<SessionArg>() as u32,
            fd: -1,
            name: name_bytes(name)?,
        };
        ioctl(self.dev.as_raw_fd(), IOCTL_CREATE_SESSION, &mut arg)
            .map_err(Error::CreateSession)?;
        Ok(Session { fd: owned(arg.fd) })
    }

    pub fn retrieve_session(&self, name: &str) -> Result<Session> {
        let mut arg = SessionArg {
            size: std::mem::size_of::<SessionArg>() as u32,
            fd: -1,
            name: name_bytes(name)?,
        };
        ioctl(self.dev.as_raw_fd(), IOCTL_RETRIEVE_SESSION, &mut arg)
            .map_err(Error::RetrieveSession)?;
        Ok(Session { fd: owned(arg.fd) })
    }
}

impl Session {
    /// Preserves `fd` under `token`; the kernel takes its own reference.
    pub fn preserve_fd(&self, fd: RawFd, token: u64) -> Result<()> {
        let mut arg = FdArg {
            size: std::mem::size_of::<FdArg>() as u32,
            fd,
            token,
        };
        ioctl(self.fd.as_raw_fd(), SESSION_PRESERVE_FD, &mut arg).map_err(Error::PreserveFd)?;
        Ok(())
    }

    /// Retrieves the file preserved under `token` by the previous kernel.
    pub fn retrieve_fd(&self, token: u64) -> Result<OwnedFd> {
        let mut arg = FdArg {
            size: std::mem::size_of::<FdArg>() as u32,
            fd: -1,
            token,
        };
        ioctl(self.fd.as_raw_fd(), SESSION_RETRIEVE_FD, &mut arg).map_err(Error::RetrieveFd)?;
        Ok(owned(arg.fd))
    }

    /// Tells the kernel the session's files are all back in use.
    pub fn finish(&self) -> Result<()> {
        let mut arg = FinishArg {
            size: std::mem::size_of::<FinishArg>() as u32,
            reserved: 0,
        };
        ioctl(self.fd.as_raw_fd(), SESSION_FINISH, &mut arg).map_err(Error::Finish)?;
        Ok(())
    }

    /// Gives up the fd without closing it, so the session stays preserved
    /// through the kexec that follows.
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_uapi() {
        // _IO(0xBA, 0x00) and _IO(0xBA, 0x40) from linux/liveupdate.h
        assert_eq!(IOCTL_CREATE_SESSION, 0xBA00);
        assert_eq!(SESSION_PRESERVE_FD, 0xBA40);
        assert_eq!(std::mem::size_of::<SessionArg>(), 72);
        assert_eq!(std::mem::size_of::<FdArg>(), 16);
    }

    #[test]
    fn session_names() {
        assert!(name_bytes("ok").is_ok());
        assert!(name_bytes("").is_err());
        assert!(name_bytes(&"x".repeat(64)).is_err());
        assert!(name_bytes(&"x".repeat(63)).is_ok());
    }
}
