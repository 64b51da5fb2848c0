//! The one atomic read-modify-write the programs need.

/// Replaces `*dst` with `new` if it holds `old`, atomically (the BPF `cmpxchg` instruction,
/// kernel 5.12 and later); true if it did. Rust's atomic types offer no compare-and-exchange
/// on the BPF target (it predates the instruction), the compiler intrinsic does.
#[inline(always)]
pub(crate) unsafe fn compare_exchange(dst: *mut u64, old: u64, new: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{atomic_cxchg, AtomicOrdering};
        // SAFETY: the caller's `dst` is valid and aligned.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(
                dst, old, new,
            )
            .1
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // The host build only type-checks the programs.
        // SAFETY: as above.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(dst) }
            .compare_exchange(
                old,
                new,
                core::sync::atomic::Ordering::AcqRel,
                core::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    }
}
