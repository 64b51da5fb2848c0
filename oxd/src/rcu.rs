//! Waiting for every BPF program already running to finish.
//!
//! oxd's programs are not sleepable: the kernel runs each of them inside an RCU read-side
//! critical section. Updating an element of a map-in-map (`BPF_MAP_TYPE_ARRAY_OF_MAPS`) makes
//! the kernel call `synchronize_rcu()` before `bpf(BPF_MAP_UPDATE_ELEM)` returns, so that user
//! space "knows that all programs that could be running use the new map value"
//! (`maybe_wait_bpf_programs`, kernel/bpf/syscall.c, since Linux 4.19). [`RcuBarrier::wait`]
//! makes such an update on a private map-in-map: when it returns, no program that could have
//! read a value oxd changed before the call is still running. aya creates map-in-maps only from
//! an object's BTF map definitions, so the two maps are created here with `bpf(2)` directly.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr` as used by `BPF_MAP_CREATE` (the leading fields; the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    _rest: [u32; 21],
}

/// `union bpf_attr` as used by `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix of the given size; the kernel
    // reads (and for these commands does not write past) that many bytes.
    let size = libc::c_uint::try_from(size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An open file descriptor as the `bpf(2)` attributes carry it.
fn fd_u32(fd: &OwnedFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("an open file descriptor is not negative")
}

fn create_map(mut attr: MapCreateAttr, name: &[u8]) -> io::Result<OwnedFd> {
    attr.map_name[..name.len()].copy_from_slice(name);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A private map-in-map whose updates wait for running BPF programs (see the module docs).
#[derive(Debug)]
pub struct RcuBarrier {
    inner: OwnedFd,
    outer: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<Self> {
        let inner = create_map(
            MapCreateAttr {
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: 4,
                max_entries: 1,
                ..MapCreateAttr::default()
            },
            b"oxd_rcu_inner",
        )?;
        let outer = create_map(
            MapCreateAttr {
                map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
                key_size: 4,
                value_size: 4,
                max_entries: 1,
                inner_map_fd: fd_u32(&inner),
                ..MapCreateAttr::default()
            },
            b"oxd_rcu_outer",
        )?;
        Ok(Self { inner, outer })
    }

    /// Returns once every BPF program that was running when it was called has finished.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = fd_u32(&self.inner);
        let mut attr = MapUpdateAttr {
            map_fd: fd_u32(&self.outer),
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            ..MapUpdateAttr::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        // offsetof(union bpf_attr, map_name) is 28 and the map_create part is 128 bytes or
        // less; the update part is 32 bytes.
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(size_of::<MapCreateAttr>(), 128);
        assert_eq!(size_of::<MapUpdateAttr>(), 32);
    }

    #[test]
    fn barrier_is_created_and_waits_as_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates BPF maps: run it as root (cargo xtask test does)"
        );
        let barrier = RcuBarrier::new().expect("create the map-in-map");
        for _ in 0..3 {
            barrier.wait().expect("update the map-in-map");
        }
    }
}
