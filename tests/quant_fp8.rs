//! FP8 E4M3FN (the KV cache format): exhaustive over codes, ties, saturation, subnormals, NaN,
//! and a sweep over f32 inputs against an independent brute-force nearest-value encoder.

use kvspool::quant::fp8::{
    e4m3_from_f32, e4m3_from_f32_slice, e4m3_to_f32, e4m3_to_f32_slice, E4M3_MAX, E4M3_NAN,
    E4M3_TO_F32,
};

/// Non-negative finite values in code order (0x00..=0x7E), from the definition: subnormals
/// m·2⁻⁹, normals (1 + m/8)·2^(e−7).
fn positive_values() -> Vec<f64> {
    (0u8..=0x7e)
        .map(|b| {
            let e = (b >> 3) as i32;
            let m = (b & 7) as f64;
            if e == 0 {
                m * 2f64.powi(-9)
            } else {
                (1.0 + m / 8.0) * 2f64.powi(e - 7)
            }
        })
        .collect()
}

#[test]
fn quant_fp8_decode_all_codes_from_definition() {
    let pos = positive_values();
    for b in 0u8..=255 {
        let v = e4m3_to_f32(b);
        assert_eq!(v.to_bits(), E4M3_TO_F32[b as usize].to_bits());
        let mag = b & 0x7f;
        if mag == 0x7f {
            assert!(v.is_nan(), "{b:#04x}");
            assert_eq!(v.is_sign_negative(), b & 0x80 != 0, "NaN sign {b:#04x}");
            continue;
        }
        let want = if b & 0x80 != 0 {
            -pos[mag as usize]
        } else {
            pos[mag as usize]
        };
        assert_eq!(v as f64, want, "{b:#04x}");
        assert_eq!(v.is_sign_negative(), b & 0x80 != 0, "sign of {b:#04x}");
    }
    assert_eq!(e4m3_to_f32(0x7e), E4M3_MAX);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
}

#[test]
fn quant_fp8_every_code_round_trips() {
    for b in 0u8..=255 {
        assert_eq!(e4m3_from_f32(e4m3_to_f32(b)), b, "{b:#04x}");
    }
}

#[test]
fn quant_fp8_ties_round_to_even() {
    let pos = positive_values();
    for code in 0..pos.len() - 1 {
        let (lo, hi) = (pos[code], pos[code + 1]);
        let mid = ((lo + hi) / 2.0) as f32;
        assert_eq!(mid as f64, (lo + hi) / 2.0, "midpoint exact in f32");
        let even = if code.is_multiple_of(2) {
            code
        } else {
            code + 1
        } as u8;
        assert_eq!(e4m3_from_f32(mid), even, "tie between {lo} and {hi}");
        assert_eq!(
            e4m3_from_f32(-mid),
            even | 0x80,
            "negative tie between {lo} and {hi}"
        );
        assert_eq!(
            e4m3_from_f32(mid.next_down()),
            code as u8,
            "just below {mid}"
        );
        assert_eq!(
            e4m3_from_f32(mid.next_up()),
            code as u8 + 1,
            "just above {mid}"
        );
    }
}

#[test]
fn quant_fp8_saturates_and_keeps_nan() {
    for x in [
        448.0f32,
        448.5,
        463.9,
        464.0,
        465.0,
        1e6,
        f32::MAX,
        f32::INFINITY,
    ] {
        assert_eq!(e4m3_from_f32(x), 0x7e, "{x}");
        assert_eq!(e4m3_from_f32(-x), 0xfe, "-{x}");
    }
    assert_eq!(e4m3_from_f32(f32::NAN), E4M3_NAN);
    assert_eq!(e4m3_from_f32(-f32::NAN), 0xff);
    assert_eq!(
        e4m3_from_f32(f32::from_bits(0x7f80_0001)),
        0x7f,
        "signalling NaN"
    );
}

#[test]
fn quant_fp8_subnormals_and_zero() {
    let t = 2f32.powi(-9);
    assert_eq!(e4m3_from_f32(0.0), 0x00);
    assert_eq!(e4m3_from_f32(-0.0), 0x80);
    assert_eq!(e4m3_from_f32(t), 0x01);
    assert_eq!(
        e4m3_from_f32(t / 2.0),
        0x00,
        "half the smallest subnormal ties to 0"
    );
    assert_eq!(e4m3_from_f32((t / 2.0).next_up()), 0x01);
    assert_eq!(e4m3_from_f32(1.5 * t), 0x02, "1.5 ties to even 2");
    assert_eq!(e4m3_from_f32(2.5 * t), 0x02, "2.5 ties to even 2");
    assert_eq!(
        e4m3_from_f32(7.5 * t),
        0x08,
        "rounds up into the normal range"
    );
    assert_eq!(e4m3_from_f32(f32::from_bits(1)), 0x00, "f32 subnormal");
    assert_eq!(e4m3_from_f32(-1e-30), 0x80);
}

/// Independent encoder: saturate at 448, else the nearest of the 127 magnitudes by brute
/// force (differences are exact in f64 below 448), ties to the even code.
fn brute_force(x: f32, pos: &[f64]) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | 0x7f;
    }
    let a = (x as f64).abs();
    if a >= 448.0 {
        return sign | 0x7e;
    }
    let mut best = 0usize;
    for (i, &v) in pos.iter().enumerate() {
        let (d, db) = ((v - a).abs(), (pos[best] - a).abs());
        if d < db || (d == db && i.is_multiple_of(2) && !best.is_multiple_of(2)) {
            best = i;
        }
    }
    sign | best as u8
}

#[test]
fn quant_fp8_encoder_matches_brute_force_over_f32_sweep() {
    // Every 251st bit pattern over all of f32 (both signs, NaN, inf, subnormals), plus a dense
    // sweep of every f32 in [0.25, 0.5) and around 448.
    let sparse = (0..=u32::MAX / 251).map(|i| f32::from_bits(i * 251));
    let dense = (0x3e80_0000u32..0x3f00_0000).step_by(7).map(f32::from_bits);
    let top = (0x43d0_0000u32..0x43f0_0000).step_by(3).map(f32::from_bits);
    let pos = positive_values();
    let mut n = 0;
    for x in sparse.chain(dense).chain(top) {
        assert_eq!(
            e4m3_from_f32(x),
            brute_force(x, &pos),
            "{x:e} ({:#010x})",
            x.to_bits()
        );
        n += 1;
    }
    assert!(n > 17_000_000, "{n}");
}

#[test]
fn quant_fp8_slices() {
    let xs = [0.0f32, 1.0, -2.5, 300.0, 1e9, f32::NAN];
    let mut codes = [0u8; 6];
    e4m3_from_f32_slice(&xs, &mut codes).unwrap();
    assert_eq!(codes, [0x00, 0x38, 0xc2, 0x79, 0x7e, 0x7f]);
    let mut back = [0.0f32; 6];
    e4m3_to_f32_slice(&codes, &mut back).unwrap();
    assert_eq!(&back[..5], &[0.0, 1.0, -2.5, 288.0, 448.0]);
    assert!(back[5].is_nan());
    assert!(e4m3_from_f32_slice(&xs, &mut codes[..5]).is_err());
}
