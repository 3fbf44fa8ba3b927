//! The one argument every generated function receives: where the buffers and sizes of the
//! current evaluation are. Generated code reads its fields at the offsets below.

use std::sync::atomic::AtomicI64;

#[repr(C)]
pub(crate) struct Frame {
    /// The address of each buffer, by buffer id.
    pub buffers: *const *mut f32,
    /// The value of each size slot.
    pub sizes: *const i64,
    /// The first out-of-range index a gather met (`i64::MIN` when none).
    pub bad_index: *const AtomicI64,
}

pub(crate) const BUFFERS: i32 = std::mem::offset_of!(Frame, buffers) as i32;
pub(crate) const SIZES: i32 = std::mem::offset_of!(Frame, sizes) as i32;

/// The frame shared by the threads of one kernel: each writes only its own range.
#[derive(Clone, Copy)]
pub(crate) struct SharedFrame(pub *const Frame);
// SAFETY: generated kernels only read the frame and write disjoint ranges of their output.
unsafe impl Send for SharedFrame {}
// SAFETY: as above; the frame outlives the parallel loop, which joins before returning.
unsafe impl Sync for SharedFrame {}
impl SharedFrame {
    pub fn get(self) -> *const Frame {
        self.0
    }
}
