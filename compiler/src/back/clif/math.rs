//! `exp`, `log` and `pow` as inline code: polynomial approximations that vectorise, instead of
//! a call per element.
//!
//! Both use Cody–Waite range reduction and Cephes' single-precision minimax polynomials.
//! Measured against f64 (tests/element_ops.rs sweeps them, and every op below): `exp` stays within
//! 2 ulp (relative error < 2.4e-7) over its whole range, with results below `f32`'s smallest
//! normal number (about 1.2e-38, inputs below -87.3) gradually losing precision and reaching
//! 0 below -104; `log` stays within 2 ulp on positive normal and subnormal inputs. Special
//! values follow IEEE: `exp(-inf) = 0`, `exp(inf) = inf`, `log(0) = -inf`, `log(x < 0) = NaN`,
//! `log(inf) = inf`, and NaN propagates.

use super::builder::{Emitter, Width};
use crate::ir::Elem;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, Value};

const LOG2_E: f64 = std::f64::consts::LOG2_E;
/// 1.5 · 2^23: adding it rounds an `f32` below 2^22 in magnitude to an integer.
const SHIFTER: f64 = 12_582_912.0;
/// ln 2 split so that `k * LN2_HI` is exact for the `k` that occur.
const LN2_HI: f64 = 0.693359375;
const LN2_LO: f64 = -2.12194440e-4;
const EXP_POLY: [f64; 6] =
    [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
const LOG_POLY: [f64; 9] = [
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
];

/// `c[0] x^(n-1) + ... + c[n-1]` by Horner's rule with fused multiply-adds.
fn horner(em: &mut Emitter, x: Value, coefficients: &[f64], w: Width) -> Value {
    let mut acc = em.constant(Elem::Real, w, coefficients[0]);
    for &c in &coefficients[1..] {
        let c = em.constant(Elem::Real, w, c);
        acc = em.fb.ins().fma(acc, x, c);
    }
    acc
}

/// `2^k` for integer lanes `k` in [-126, 127].
fn pow2(em: &mut Emitter, k: Value, w: Width) -> Value {
    let bias = em.constant(Elem::Int, w, 127.0);
    let biased = em.fb.ins().iadd(k, bias);
    let bits = em.fb.ins().ishl_imm_u(biased, 23);
    em.as_real_bits(bits, w)
}

pub(crate) fn exp(em: &mut Emitter, x: Value, w: Width) -> Value {
    // Clamping keeps the exponent arithmetic in range; beyond these, the result is 0 or inf
    // anyway.
    let lo = em.constant(Elem::Real, w, -104.0);
    let hi = em.constant(Elem::Real, w, 89.0);
    // Compare-and-select rather than `fmax`/`fmin`, whose NaN rules cost several
    // instructions on x86; comparisons with NaN are false, so NaN is kept.
    let below = em.fcmp(FloatCC::LessThan, x, lo, w);
    let x = em.select(below, lo, x, w);
    let above = em.fcmp(FloatCC::GreaterThan, x, hi, w);
    let x = em.select(above, hi, x, w);
    // k = round(x log2 e), by adding 1.5 · 2^23: the sum's low mantissa bits are k itself,
    // which saves a float-to-int conversion (slow on vectors).
    let log2e = em.constant(Elem::Real, w, LOG2_E);
    let shifter = em.constant(Elem::Real, w, SHIFTER);
    let shifted = em.fb.ins().fma(x, log2e, shifter);
    let k = em.fb.ins().fsub(shifted, shifter);
    let neg_hi = em.constant(Elem::Real, w, -LN2_HI);
    let neg_lo = em.constant(Elem::Real, w, -LN2_LO);
    let r = em.fb.ins().fma(k, neg_hi, x);
    let r = em.fb.ins().fma(k, neg_lo, r);
    let r2 = em.fb.ins().fmul(r, r);
    let p = horner(em, r, &EXP_POLY, w);
    let one = em.constant(Elem::Real, w, 1.0);
    let r_plus_one = em.fb.ins().fadd(r, one);
    let e_r = em.fb.ins().fma(p, r2, r_plus_one);
    // 2^k as two factors, so that k from -150 to 129 never leaves the normal exponent range
    // (results underflow gradually and overflow to inf on the final products).
    let shifted_bits = em.as_int_bits(shifted, w);
    let shifter_bits = em.constant(Elem::Int, w, f64::from((SHIFTER as f32).to_bits() as i32));
    let ki = em.fb.ins().isub(shifted_bits, shifter_bits);
    let half = em.fb.ins().sshr_imm_u(ki, 1);
    let rest = em.fb.ins().isub(ki, half);
    let s1 = pow2(em, half, w);
    let s2 = pow2(em, rest, w);
    let partial = em.fb.ins().fmul(e_r, s1);
    em.fb.ins().fmul(partial, s2)
}

pub(crate) fn log(em: &mut Emitter, x: Value, w: Width) -> Value {
    // Subnormal inputs are scaled into the normal range first.
    let min_normal = em.constant(Elem::Real, w, f32::MIN_POSITIVE as f64);
    let small = em.fcmp(FloatCC::LessThan, x, min_normal, w);
    let two_23 = em.constant(Elem::Real, w, 8388608.0);
    let scaled = em.fb.ins().fmul(x, two_23);
    let v = em.select(small, scaled, x, w);
    let shift = em.constant(Elem::Int, w, 23.0);
    let zero_i = em.constant(Elem::Int, w, 0.0);
    let exponent_fix = em.select(small, shift, zero_i, w);

    // v = m * 2^e with m in [0.5, 1).
    let bits = em.as_int_bits(v, w);
    let raw_e = em.fb.ins().ushr_imm_u(bits, 23);
    let e_bias = em.constant(Elem::Int, w, 126.0);
    let e = em.fb.ins().isub(raw_e, e_bias);
    let e = em.fb.ins().isub(e, exponent_fix);
    let mantissa_mask = em.constant(Elem::Int, w, f64::from(0x007f_ffff));
    let half_exponent = em.constant(Elem::Int, w, f64::from(0x3f00_0000));
    let m_bits = em.fb.ins().band(bits, mantissa_mask);
    let m_bits = em.fb.ins().bor(m_bits, half_exponent);
    let m = em.as_real_bits(m_bits, w);

    // Below sqrt(1/2), use 2m and e - 1, so that f = m - 1 lies in [-0.29, 0.41].
    let sqrt_half = em.constant(Elem::Real, w, std::f64::consts::FRAC_1_SQRT_2);
    let below = em.fcmp(FloatCC::LessThan, m, sqrt_half, w);
    let e = em.fb.ins().iadd(e, below); // the mask is -1 where true
    let one = em.constant(Elem::Real, w, 1.0);
    let zero = em.constant(Elem::Real, w, 0.0);
    let f = em.fb.ins().fsub(m, one);
    let extra = em.select(below, m, zero, w);
    let f = em.fb.ins().fadd(f, extra);

    let real_ty = super::builder::reg_type(Elem::Real, w);
    let ef = em.fb.ins().fcvt_from_sint(real_ty, e);
    let z = em.fb.ins().fmul(f, f);
    let p = horner(em, f, &LOG_POLY, w);
    let fz = em.fb.ins().fmul(f, z);
    let y = em.fb.ins().fmul(p, fz);
    let c_lo = em.constant(Elem::Real, w, LN2_LO);
    let y = em.fb.ins().fma(ef, c_lo, y);
    let minus_half = em.constant(Elem::Real, w, -0.5);
    let y = em.fb.ins().fma(z, minus_half, y);
    let fy = em.fb.ins().fadd(f, y);
    let c_hi = em.constant(Elem::Real, w, LN2_HI);
    let result = em.fb.ins().fma(ef, c_hi, fy);

    // IEEE special cases.
    let inf = em.constant(Elem::Real, w, f64::INFINITY);
    let neg_inf = em.constant(Elem::Real, w, f64::NEG_INFINITY);
    let nan = em.constant(Elem::Real, w, f64::NAN);
    let is_inf = em.fcmp(FloatCC::Equal, x, inf, w);
    let result = em.select(is_inf, inf, result, w);
    let is_zero = em.fcmp(FloatCC::Equal, x, zero, w);
    let result = em.select(is_zero, neg_inf, result, w);
    let negative_or_nan = em.fcmp(FloatCC::UnorderedOrLessThan, x, zero, w);
    em.select(negative_or_nan, nan, result, w)
}

/// `x ** y` with the reference evaluator's conventions: `|x| ** y` from `exp(y log |x|)`,
/// negated for a negative base and an odd integer exponent, and `x ** 0 = 1`.
pub(crate) fn pow(em: &mut Emitter, x: Value, y: Value, w: Width) -> Value {
    let ax = em.fb.ins().fabs(x);
    let l = log(em, ax, w);
    let yl = em.fb.ins().fmul(y, l);
    let magnitude = exp(em, yl, w);
    let half = em.constant(Elem::Real, w, 0.5);
    let two = em.constant(Elem::Real, w, 2.0);
    let one = em.constant(Elem::Real, w, 1.0);
    let zero = em.constant(Elem::Real, w, 0.0);
    let halves = em.fb.ins().fmul(y, half);
    let floor = em.fb.ins().floor(halves);
    let even_part = em.fb.ins().fmul(floor, two);
    let parity = em.fb.ins().fsub(y, even_part);
    let parity = em.fb.ins().fabs(parity);
    let odd = em.fcmp(FloatCC::Equal, parity, one, w);
    let negative = em.fcmp(FloatCC::LessThan, x, zero, w);
    let flip = em.fb.ins().band(odd, negative);
    let negated = em.fb.ins().fneg(magnitude);
    let signed = em.select(flip, negated, magnitude, w);
    let y_zero = em.fcmp(FloatCC::Equal, y, zero, w);
    em.select(y_zero, one, signed, w)
}

/// Python's `%` on ints: the result has the divisor's sign; `x % 0` is 0 here (it is an error
/// in Python, and the reference evaluator's float route gives no meaningful value). Scalar only:
/// x86 has no vector integer division.
pub(crate) fn int_rem(em: &mut Emitter, l: Value, r: Value) -> Value {
    let zero = em.fb.ins().iconst(cranelift_codegen::ir::types::I32, 0);
    let one = em.fb.ins().iconst(cranelift_codegen::ir::types::I32, 1);
    let r_is_zero = em.fb.ins().icmp(IntCC::Equal, r, zero);
    let divisor = em.fb.ins().select(r_is_zero, one, r);
    let rem = em.fb.ins().srem(l, divisor);
    let rem_negative = em.fb.ins().icmp(IntCC::SignedLessThan, rem, zero);
    let divisor_negative = em.fb.ins().icmp(IntCC::SignedLessThan, divisor, zero);
    let signs_differ = em.fb.ins().bxor(rem_negative, divisor_negative);
    let rem_nonzero = em.fb.ins().icmp(IntCC::NotEqual, rem, zero);
    let adjust = em.fb.ins().band(signs_differ, rem_nonzero);
    let adjusted = em.fb.ins().iadd(rem, divisor);
    let result = em.fb.ins().select(adjust, adjusted, rem);
    em.fb.ins().select(r_is_zero, zero, result)
}

/// `log(1 + x)` by Goldberg's correction: with `u = 1 + x` rounded, `log(u) · x / (u - 1)`
/// cancels the rounding of `u`, so tiny `x` keep their digits (`log1p(1e-20) = 1e-20`, where
/// `log(1 + x)` gives 0). Within 8 ulp (1e-6 relative) of f64, swept by tests/element_ops.rs; `log1p(-1) = -inf`, `log1p(x < -1) = NaN`, `log1p(inf) = inf`.
pub(crate) fn log1p(em: &mut Emitter, x: Value, w: Width) -> Value {
    let one = em.constant(Elem::Real, w, 1.0);
    let zero = em.constant(Elem::Real, w, 0.0);
    let inf = em.constant(Elem::Real, w, f64::INFINITY);
    let u = em.fb.ins().fadd(one, x);
    let d = em.fb.ins().fsub(u, one);
    let l = log(em, u, w);
    let ratio = em.fb.ins().fdiv(x, d);
    let corrected = em.fb.ins().fmul(l, ratio);
    // u - 1 = 0: x is below half an ulp of 1, and log1p(x) = x to f32 precision.
    let exact = em.fcmp(FloatCC::Equal, d, zero, w);
    let result = em.select(exact, x, corrected, w);
    // u = inf (x = inf) and u = 0 (x = -1): the ratio is NaN or harmless; log(u) is the answer.
    let infinite = em.fcmp(FloatCC::Equal, u, inf, w);
    let result = em.select(infinite, l, result, w);
    let at_zero = em.fcmp(FloatCC::Equal, u, zero, w);
    em.select(at_zero, l, result, w)
}

/// `exp(x) - 1` by Kahan's correction: with `u = exp(x)`, `(u - 1) · x / log(u)` cancels the
/// rounding of `u` (`expm1(1e-20) = 1e-20`). Within 8 ulp (1e-6 relative) of f64, swept by
/// tests/element_ops.rs; `expm1(-inf) = -1`, `expm1(inf) = inf`.
pub(crate) fn expm1(em: &mut Emitter, x: Value, w: Width) -> Value {
    let one = em.constant(Elem::Real, w, 1.0);
    let minus_one = em.constant(Elem::Real, w, -1.0);
    let inf = em.constant(Elem::Real, w, f64::INFINITY);
    let u = exp(em, x, w);
    let um1 = em.fb.ins().fsub(u, one);
    let l = log(em, u, w);
    let ratio = em.fb.ins().fdiv(x, l);
    let corrected = em.fb.ins().fmul(um1, ratio);
    // u = 1: |x| is below half an ulp of 1, and expm1(x) = x to f32 precision.
    let exact = em.fcmp(FloatCC::Equal, u, one, w);
    let result = em.select(exact, x, corrected, w);
    // u - 1 = -1 (x very negative) and u = inf: the ratio is NaN or harmless.
    let bottom = em.fcmp(FloatCC::Equal, um1, minus_one, w);
    let result = em.select(bottom, minus_one, result, w);
    let infinite = em.fcmp(FloatCC::Equal, u, inf, w);
    em.select(infinite, inf, result, w)
}

/// `log(1 + exp(x))` as `max(x, 0) + log1p(exp(-|x|))`: no overflow for large `x`, and the
/// accuracy of [`log1p`] and [`exp`] (a few ulp).
pub(crate) fn softplus(em: &mut Emitter, x: Value, w: Width) -> Value {
    let zero = em.constant(Elem::Real, w, 0.0);
    let ax = em.fb.ins().fabs(x);
    let nax = em.fb.ins().fneg(ax);
    let e = exp(em, nax, w);
    let tail = log1p(em, e, w);
    let positive = em.fcmp(FloatCC::GreaterThan, x, zero, w);
    let head = em.select(positive, x, zero, w);
    em.fb.ins().fadd(head, tail)
}
