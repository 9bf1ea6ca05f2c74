//! A hint to the CPU to start fetching memory the caller will touch soon:
//! one of the crate's two `unsafe` modules (the other is the inbox's ring,
//! `inbox/ring.rs`).
//!
//! Why: a publisher's kept envelopes (`queue/recycle.rs`) come from the
//! consumer's core, 32 at a time, each last written there. Reusing one
//! began with an atomic compare-and-swap on its reference count that
//! waited for the line to cross between cores, one envelope after another:
//! `perf` of a 1→1 run put 16% of the publisher's time on that single
//! instruction. Prefetching the whole magazine when it arrives sends for
//! all of its lines at once, so their crossings overlap. Measured on the
//! development VM (Intel Xeon, alternating pairs of the profiling harness):
//! 1→1 auto-ack +8% to +15% over four sets. A safe stand-in — reading
//! each envelope's reference count in a loop, so that the loads overlap —
//! measured +5%: it reaches one of the two or three lines an envelope
//! spans, and a load must complete where a prefetch need not.
//!
//! Why `unsafe` is sound here: a prefetch instruction has no architectural
//! effect. It never faults, never reads into a register and never writes;
//! the address need not be valid, mapped or aligned (the caller's pointer
//! arithmetic uses `wrapping_*`, so it is itself safe). The intrinsic is an
//! `unsafe fn` only because it is declared `#[target_feature(enable =
//! "sse")]`, and SSE is part of every `x86_64` target. On other
//! architectures the hint is a no-op.

/// Starts fetching the cache lines that `len` bytes from `start` span,
/// into every level of the cache, for a read or a write soon after.
#[inline]
pub(crate) fn lines(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // `start`, every 64 bytes after it, then the last byte: for an
        // envelope's 104 bytes, two or three hints whatever the alignment.
        // (Stepping over the line-aligned addresses instead measured 5%
        // slower on a 1→1 run.)
        let last = start.wrapping_add(len.saturating_sub(1));
        let mut at = start;
        while (at as usize) < (last as usize) {
            hint(at);
            at = at.wrapping_add(64);
            if (at as usize) < 64 {
                return;
            }
        }
        hint(last);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (start, len);
    }
}

/// One line's prefetch.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hint(at: *const u8) {
    #[allow(unsafe_code)]
    // SAFETY: see the module docs: a prefetch of any address, valid or
    // not, has no effect but on the cache; SSE is baseline on x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_of_any_address_is_harmless() {
        let value = [7u8; 200];
        lines(value.as_ptr(), value.len());
        lines(value.as_ptr().wrapping_sub(4096), 64);
        lines(std::ptr::null(), 128);
        lines(usize::MAX as *const u8, 64);
        lines(value.as_ptr(), 0);
        assert_eq!(value, [7u8; 200], "nothing written");
    }
}
