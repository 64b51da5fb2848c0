//! Many elements of one map in one system call (`BPF_MAP_UPDATE_BATCH`), which aya 0.13 does not
//! offer: a policy of 10,000 network rules is 10,000 trie elements.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_MAP_UPDATE_BATCH` (`enum bpf_cmd`).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Elements per call: bounds how long one call holds the CPU.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// How a batch update ended.
#[derive(Debug)]
pub enum BatchError {
    /// The kernel has no batch update for this map (or no batch commands at all): nothing was
    /// written; write the elements one by one.
    Unsupported,
    /// The first `done` elements were written; element `done` failed with `source`.
    Failed { done: usize, source: io::Error },
}

/// Writes `keys[i] -> values[i]` (as many as the shorter slice holds) into the map `fd` with
/// `BPF_ANY`, in one call per [`CHUNK`] elements.
///
/// # Safety
///
/// `K` and `V` must be the map's key and value types exactly: plain data without padding the
/// kernel would read uninitialised (the `aya::Pod` types of `oxd_common`).
pub unsafe fn update<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    let total = keys.len().min(values.len());
    let mut done = 0;
    while done < total {
        let end = (done + CHUNK).min(total);
        let mut attr = BatchAttr {
            keys: keys[done..end].as_ptr() as u64,
            values: values[done..end].as_ptr() as u64,
            count: u32::try_from(end - done).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd().cast_unsigned(),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the `bpf_attr` of this command; the key and value arrays hold
        // `count` elements of the map's types and outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let written = attr.count as usize;
            // ENOTSUPP (524, the kernel's own) or EINVAL: no batch update here. Falling back is
            // safe either way: one by one, an element that is itself invalid fails again.
            let unsupported = matches!(source.raw_os_error(), Some(524 | libc::EINVAL));
            if done == 0 && written == 0 && unsupported {
                return Err(BatchError::Unsupported);
            }
            return Err(BatchError::Failed {
                done: done + written,
                source,
            });
        }
        done = end;
    }
    Ok(())
}
