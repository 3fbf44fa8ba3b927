//! Allocator tuning for training processes.

/// Training allocates and frees activation-sized buffers (megabytes each) many times a step.
/// glibc returns every block above 128 KiB to the kernel on free, so each step page-faults its
/// activations in again: a profile of a small-conv step spent a third of its time zeroing fresh
/// pages. Serving blocks up to 32 MiB (glibc's ceiling) from the heap, and not trimming it,
/// makes freed buffers reusable: `sslc bench-train --backbone small --batch-size 256
/// --image-size 28 --channels 1` went from 41 to 111 images/s. Call it first thing in `main`.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
