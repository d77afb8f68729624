//! Block codecs: layouts (element and nibble order), MXFP4 edge encodings, BF16/F16 rules and
//! quantization error bounds. Bit-exactness against gguf-py is in `quant_fixtures.rs`.

use kvspool::gguf::GgmlType;
use kvspool::quant::{
    self, bf16_from_f32, bf16_to_f32, e8m0_to_f32_half, f16_from_f32, BlockMxfp4, BlockQ4_0,
    BlockQ4_1, BlockQ8_0, KVALUES_MXFP4,
};

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    quant::dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

fn quant(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    quant::quantize_row(ty, x, &mut out).unwrap();
    out
}

/// gpt-oss-spec §4.2 worked example: `7E 9A 71 00 …`.
#[test]
fn quant_mxfp4_spec_worked_example() {
    let mut b = [0u8; 17];
    b[0] = 0x7e;
    b[1] = 0x9a;
    b[2] = 0x71;
    let v = dequant(GgmlType::MXFP4, &b, 32);
    let mut want = [0.0f32; 32];
    want[0] = -0.5;
    want[16] = -0.25;
    want[1] = 0.25;
    want[17] = 3.0;
    assert_eq!(v, want);
}

#[test]
fn quant_mxfp4_edge_scales_and_every_nibble() {
    assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
    assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
    assert_eq!(e8m0_to_f32_half(2), 2f32.powi(-126));
    assert_eq!(e8m0_to_f32_half(128), 1.0);
    assert_eq!(e8m0_to_f32_half(254), 2f32.powi(126));
    assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127), "e = 255 is not NaN");
    for e in [0u8, 1, 2, 100, 127, 128, 200, 254, 255] {
        let mut b = [0u8; 17];
        b[0] = e;
        for j in 0..16u8 {
            b[1 + j as usize] = j | ((15 - j) << 4);
        }
        let v = dequant(GgmlType::MXFP4, &b, 32);
        let d = e8m0_to_f32_half(e);
        for j in 0..16 {
            assert_eq!(v[j], KVALUES_MXFP4[j] as f32 * d, "e={e} low nibble {j}");
            assert_eq!(
                v[j + 16],
                KVALUES_MXFP4[15 - j] as f32 * d,
                "e={e} high nibble {j}"
            );
        }
        // ±0 codes.
        assert_eq!(v[0].to_bits(), 0);
        assert_eq!(v[8], 0.0);
    }
}

#[test]
fn quant_nibble_order_is_split_not_interleaved() {
    // qs[0] = 0x21: element 0 gets nibble 1, element 16 gets nibble 2, element 1 stays 0.
    let mut b = [0u8; 18];
    b[..2].copy_from_slice(&f16_from_f32(1.0).to_le_bytes());
    b[2] = 0x21;
    let v = dequant(GgmlType::Q4_0, &b, 32);
    assert_eq!((v[0], v[16], v[1]), (-7.0, -6.0, -8.0));
    let mut b = [0u8; 20];
    b[..2].copy_from_slice(&f16_from_f32(0.5).to_le_bytes());
    b[2..4].copy_from_slice(&f16_from_f32(-1.0).to_le_bytes());
    b[4] = 0x21;
    let v = dequant(GgmlType::Q4_1, &b, 32);
    assert_eq!((v[0], v[16], v[1]), (-0.5, 0.0, -1.0));
    // Q8_0: plain byte order, signed.
    let mut b = [0u8; 34];
    b[..2].copy_from_slice(&f16_from_f32(0.25).to_le_bytes());
    b[2] = 0xff;
    b[33] = 0x80;
    let v = dequant(GgmlType::Q8_0, &b, 32);
    assert_eq!((v[0], v[31]), (-0.25, -32.0));
}

#[test]
fn quant_block_structs_round_trip_bytes() {
    let bytes: Vec<u8> = (0..34u8).map(|i| i.wrapping_mul(37)).collect();
    assert_eq!(
        BlockQ8_0::from_bytes(bytes[..34].try_into().unwrap()).to_bytes()[..],
        bytes[..34]
    );
    assert_eq!(
        BlockQ4_0::from_bytes(bytes[..18].try_into().unwrap()).to_bytes()[..],
        bytes[..18]
    );
    assert_eq!(
        BlockQ4_1::from_bytes(bytes[..20].try_into().unwrap()).to_bytes()[..],
        bytes[..20]
    );
    assert_eq!(
        BlockMxfp4::from_bytes(bytes[..17].try_into().unwrap()).to_bytes()[..],
        bytes[..17]
    );
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::MXFP4,
    ] {
        assert_eq!(ty.type_size(), ty.row_bytes(32).unwrap() as usize);
    }
}

#[test]
fn quant_bf16_rules() {
    // Round to nearest even on the dropped half.
    assert_eq!(
        bf16_from_f32(f32::from_bits(0x3f80_8000)),
        0x3f80,
        "tie, even kept"
    );
    assert_eq!(
        bf16_from_f32(f32::from_bits(0x3f81_8000)),
        0x3f82,
        "tie, odd rounds up"
    );
    assert_eq!(bf16_from_f32(f32::from_bits(0x3f80_8001)), 0x3f81);
    assert_eq!(
        bf16_from_f32(f32::from_bits(0x7f7f_ffff)),
        0x7f80,
        "overflow to inf"
    );
    // NaN is truncated and made quiet.
    assert_eq!(bf16_from_f32(f32::from_bits(0x7f80_0001)), 0x7fc0);
    assert_eq!(bf16_from_f32(f32::from_bits(0xff81_2345)), 0xffc1);
    assert_eq!(bf16_from_f32(f32::INFINITY), 0x7f80);
    assert_eq!(bf16_to_f32(0x3f80), 1.0);
    assert_eq!(bf16_to_f32(0x8000).to_bits(), 0x8000_0000);
}

#[test]
fn quant_f16_and_bf16_rows_round_trip_representable_values() {
    let xs: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 0.125).collect();
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
        assert_eq!(dequant(ty, &quant(ty, &xs), xs.len()), xs, "{ty}");
    }
}

/// Reference quantizers' error: Q8_0 `|x − x̂| ≤ d/2 + 127·|d − d16|` where `d16` is the f16
/// scale (≤ 2⁻¹¹·d) — i.e. at most `d·(0.5 + 127·2⁻¹¹) + ulp`; Q4_1 the same with 15 steps of
/// `(max − min)/15` plus the f16 rounding of `min`.
#[test]
fn quant_round_trip_error_bounds() {
    let mut s = 12345u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
    };
    for _ in 0..200 {
        let x: Vec<f32> = (0..64).map(|_| next()).collect();
        let y = dequant(GgmlType::Q8_0, &quant(GgmlType::Q8_0, &x), 64);
        for (blk, ys) in x.chunks(32).zip(y.chunks(32)) {
            let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let tol = d * (0.5 + 127.0 / 2048.0) + 4.0 * f32::EPSILON * amax;
            for (a, b) in blk.iter().zip(ys) {
                assert!((a - b).abs() <= tol, "Q8_0 {a} -> {b} (d {d})");
            }
        }
        let y = dequant(GgmlType::Q4_1, &quant(GgmlType::Q4_1, &x), 64);
        for (blk, ys) in x.chunks(32).zip(y.chunks(32)) {
            let min = blk.iter().fold(f32::MAX, |a, &v| a.min(v));
            let max = blk.iter().fold(f32::MIN, |a, &v| a.max(v));
            let d = (max - min) / 15.0;
            let tol = d * (0.5 + 15.0 / 2048.0)
                + min.abs() / 2048.0
                + 4.0 * f32::EPSILON * (max - min + min.abs());
            for (a, b) in blk.iter().zip(ys) {
                assert!((a - b).abs() <= tol, "Q4_1 {a} -> {b} (d {d})");
            }
        }
    }
}

#[test]
fn quant_unsupported_and_partial_rows_are_errors() {
    let mut out = [0.0f32; 256];
    assert!(quant::dequantize_row(GgmlType::Q6_K, &[0u8; 210], &mut out).is_err());
    assert!(quant::quantize_row(GgmlType::Q8_1, &[0.0; 32], &mut [0u8; 36]).is_err());
    assert!(quant::quantize_row(GgmlType::Q4_0, &[0.0; 31], &mut [0u8; 18]).is_err());
    assert!(quant::quantize_row(GgmlType::F16, &[0.0; 3], &mut [0u8; 5]).is_err());
    assert_eq!(quant::row_bytes(GgmlType::MXFP4, 64, "x"), Ok(34));
}

#[test]
fn quant_e8m0_table_matches_function() {
    for e in 0..=255u8 {
        assert_eq!(
            quant::E8M0_TO_F32_HALF[e as usize].to_bits(),
            e8m0_to_f32_half(e).to_bits(),
            "{e}"
        );
    }
}
