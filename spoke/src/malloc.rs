//! The C allocator's settings for a long-running data mover: glibc's mmap threshold fixed, so
//! the heap does not fragment under the relay's buffers (the spoke's one `unsafe` call).
//!
//! glibc's malloc serves blocks of 128 KiB and more from their own mappings at first, but once
//! such a block is freed it raises that threshold to the block's size (up to 32 MiB) and serves
//! later ones from the heap. The HTTP client's read buffers (64–408 KiB) behind the relay's
//! chunks live until QUIC acknowledges them and are freed out of order, so the heap fragments:
//! in `bench wan` case c with 32 MiB windows the relaying spoke peaked at 82–84 MiB RSS, 60–69
//! with the threshold fixed at 64 KiB (the writer 62 and 53–56), at the same CPU per Gbit.
//! Fixing the threshold turns the adjustment off.

#![allow(unsafe_code)]

/// Blocks at least this large get their own mapping, returned to the system when freed.
pub const MMAP_THRESHOLD: i32 = 64 << 10;
/// Free memory at the top of the heap beyond this is returned to the system.
pub const TRIM_THRESHOLD: i32 = 128 << 10;

/// Applies the settings; call first thing in `main`, before any other thread starts. `false`
/// when glibc refused them (its defaults stay: slower to give memory back, nothing worse).
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes the allocator's parameters (under the allocator's own
        // lock); both values are within the documented ranges. It returns 0 on a refusal.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}
