//! Strided `f32` matrices and the one call into the `gemm` crate that multiplies them, shared
//! by the `sslc_gemm` entry point ([`super::runtime`]) and the tiled loop ([`super::tiles`]).

/// A strided `f32` matrix view: address and strides in elements.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub base: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    pub fn new(base: i64, rs: i64, cs: i64) -> View {
        View { base: base as *const f32, rs: rs as isize, cs: cs as isize }
    }
    /// The view from row `r` on.
    pub fn rows_from(self, r: i64) -> View {
        View { base: self.base.wrapping_offset(r as isize * self.rs), ..self }
    }
    pub fn transposed(self) -> View {
        View { rs: self.cs, cs: self.rs, ..self }
    }
}

/// `dst (+)= lhs[m × k] · rhs[k × n]` by the `gemm` crate; `accumulate` keeps what `dst`
/// held. Every matrix product of the CPU back end goes through here.
///
/// # Safety
///
/// `lhs` and `rhs` must be readable as `m × k` and `k × n` matrices with their strides, and
/// `dst` writable as an `m × n` one with `dst_rs`, `dst_cs`, not overlapping the operands.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into(
    [m, n, k]: [i64; 3],
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    lhs: View,
    rhs: View,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller guarantees the matrices as `gemm` reads and writes them (see above).
    unsafe {
        gemm::gemm(
            m as usize,
            n as usize,
            k as usize,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs.base,
            lhs.cs,
            lhs.rs,
            rhs.base,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
