//! Bit-exactness of `kvspool::quant` against gguf-py (ggml's reference quantizers) and
//! `ml_dtypes` (OCP FP8 E4M3FN), using the fixtures written by `tools/gen-quant-fixtures.py`.

use kvspool::gguf::GgmlType;
use kvspool::quant::{self, fp8, QuantError};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant");

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u32s(&mut self, n: usize) -> Vec<u32> {
        self.take(4 * n)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.u32s(n).into_iter().map(f32::from_bits).collect()
    }
}

struct Fixture {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    input: Option<Vec<f32>>,
    quant: Vec<u8>,
    deq_bits: Vec<u32>,
}

fn load(name: &str) -> Fixture {
    let bytes = std::fs::read(format!("{DIR}/{name}.bin")).expect("fixture file");
    let mut r = Reader(&bytes);
    assert_eq!(r.take(4), b"KVQF");
    assert_eq!(r.u32(), 1, "version");
    let ty = GgmlType::from_id(r.u32()).expect("known type");
    let flags = r.u32();
    let rows = r.u32() as usize;
    let cols = r.u32() as usize;
    let row_bytes = r.u32() as usize;
    assert_eq!(ty.row_bytes(cols as u64), Some(row_bytes as u64));
    let input = (flags & 1 != 0).then(|| r.f32s(rows * cols));
    let quant = r.take(rows * row_bytes).to_vec();
    let deq_bits = r.u32s(rows * cols);
    assert!(r.0.is_empty(), "trailing bytes in {name}");
    Fixture {
        ty,
        rows,
        cols,
        row_bytes,
        input,
        quant,
        deq_bits,
    }
}

/// Bitwise equality, except that any NaN equals any NaN (numpy and Rust may produce NaNs with
/// different payloads or signs, e.g. from `inf · 0`).
fn same_bits(a: u32, b: u32) -> bool {
    a == b || (f32::from_bits(a).is_nan() && f32::from_bits(b).is_nan())
}

fn check_dequantize(f: &Fixture) {
    let mut out = vec![0.0f32; f.cols];
    for r in 0..f.rows {
        let src = &f.quant[r * f.row_bytes..(r + 1) * f.row_bytes];
        quant::dequantize_row(f.ty, src, &mut out).unwrap();
        for (c, (v, &want)) in out.iter().zip(&f.deq_bits[r * f.cols..]).enumerate() {
            let got = v.to_bits();
            assert!(
                same_bits(got, want),
                "{} dequantize row {r} col {c}: got {got:#010x} ({v}) want {want:#010x} ({})",
                f.ty,
                f32::from_bits(want)
            );
        }
    }
}

fn check_quantize(f: &Fixture) {
    let input = f.input.as_ref().expect("fixture has input");
    let mut out = vec![0u8; f.row_bytes];
    for r in 0..f.rows {
        quant::quantize_row(f.ty, &input[r * f.cols..(r + 1) * f.cols], &mut out).unwrap();
        let want = &f.quant[r * f.row_bytes..(r + 1) * f.row_bytes];
        let x = &input[r * f.cols..(r + 1) * f.cols];
        if f.ty == GgmlType::Q4_1 && out != want {
            q4_1_signed_zero_tie(x, &out, want);
            continue;
        }
        assert_eq!(out, want, "{} quantize row {r}: input {x:?}", f.ty);
    }
}

/// The one documented difference from gguf-py. ggml's `quantize_row_q4_1_ref` takes the
/// block's min and max with strict comparisons, so among equal values (`+0.0` and `-0.0`) the
/// first one wins; numpy's `min`/`max` reductions return the last. kvspool follows ggml. The
/// bytes may then differ only in the sign bit of a zero `d` or `m` field (the decoded values are
/// identical, which `check_dequantize` verifies), and only in blocks holding both signed zeros.
fn q4_1_signed_zero_tie(x: &[f32], got: &[u8], want: &[u8]) {
    for (b, (g, w)) in got.chunks_exact(20).zip(want.chunks_exact(20)).enumerate() {
        if g == w {
            continue;
        }
        assert_eq!(g[4..], w[4..], "Q4_1 block {b}: nibbles differ");
        let xb = &x[b * 32..(b + 1) * 32];
        let has_pos0 = xb.iter().any(|v| v.to_bits() == 0);
        let has_neg0 = xb.iter().any(|v| v.to_bits() == 0x8000_0000);
        assert!(
            has_pos0 && has_neg0,
            "Q4_1 block {b} differs without a signed-zero tie: {xb:?}"
        );
        for field in [0..2, 2..4] {
            let (gf, wf) = (&g[field.clone()], &w[field]);
            let (gv, wv) = (
                u16::from_le_bytes([gf[0], gf[1]]),
                u16::from_le_bytes([wf[0], wf[1]]),
            );
            assert!(
                gv == wv || (gv & 0x7fff == 0 && wv & 0x7fff == 0),
                "Q4_1 block {b}: {gv:#x} vs {wv:#x}"
            );
        }
        // ggml semantics: the first zero in the block decides the sign of a zero minimum.
        let m = u16::from_le_bytes([g[2], g[3]]);
        if m & 0x7fff == 0 {
            let min = xb.iter().fold(f32::MAX, |a, &v| if v < a { v } else { a });
            assert_eq!(m >> 15, (min.to_bits() >> 31) as u16);
        }
    }
}

#[test]
fn quant_fixture_f16_matches_numpy() {
    let f = load("F16");
    check_quantize(&f);
    check_dequantize(&f);
}

#[test]
fn quant_fixture_bf16_matches_gguf_py() {
    let f = load("BF16");
    check_quantize(&f);
    check_dequantize(&f);
}

#[test]
fn quant_fixture_q8_0_matches_gguf_py() {
    let f = load("Q8_0");
    check_quantize(&f);
    check_dequantize(&f);
}

#[test]
fn quant_fixture_q4_0_matches_gguf_py() {
    let f = load("Q4_0");
    check_quantize(&f);
    check_dequantize(&f);
}

#[test]
fn quant_fixture_q4_1_matches_gguf_py() {
    let f = load("Q4_1");
    check_quantize(&f);
    check_dequantize(&f);
}

#[test]
fn quant_fixture_mxfp4_matches_gguf_py() {
    let f = load("MXFP4");
    check_quantize(&f);
    check_dequantize(&f);
}

#[test]
fn quant_fixture_mxfp4_raw_blocks_dequantize_like_gguf_py() {
    let f = load("MXFP4_raw");
    assert!(f.input.is_none());
    check_dequantize(&f);
}

#[test]
fn quant_fixture_fp8_e4m3_matches_ml_dtypes() {
    let bytes = std::fs::read(format!("{DIR}/fp8_e4m3.bin")).expect("fixture file");
    let mut r = Reader(&bytes);
    assert_eq!(r.take(4), b"KVF8");
    assert_eq!(r.u32(), 1);
    let dec = r.u32s(256);
    for (code, &want) in dec.iter().enumerate() {
        let got = fp8::e4m3_to_f32(code as u8).to_bits();
        assert_eq!(got, want, "decode {code:#04x}");
        assert_eq!(fp8::E4M3_TO_F32[code].to_bits(), want, "table {code:#04x}");
    }
    let n = r.u32() as usize;
    let xs = r.f32s(n);
    let codes = r.take(n);
    assert!(r.0.is_empty());
    for (&x, &want) in xs.iter().zip(codes) {
        assert_eq!(
            fp8::e4m3_from_f32(x),
            want,
            "encode {x:e} ({:#010x})",
            x.to_bits()
        );
    }
    let mut enc = vec![0u8; n];
    fp8::e4m3_from_f32_slice(&xs, &mut enc).unwrap();
    assert_eq!(enc, codes);
}

#[test]
fn quant_row_length_errors_are_reported() {
    let mut out = [0.0f32; 32];
    assert_eq!(
        quant::dequantize_row(GgmlType::Q4_1, &[0u8; 19], &mut out),
        Err(QuantError::ByteLength {
            ty: GgmlType::Q4_1,
            elements: 32,
            expected: 20,
            actual: 19
        })
    );
    let mut out = [0.0f32; 33];
    assert_eq!(
        quant::dequantize_row(GgmlType::Q8_0, &[0u8; 34], &mut out),
        Err(QuantError::PartialBlock {
            ty: GgmlType::Q8_0,
            elements: 33,
            block: 32
        })
    );
    let mut bytes = [0u8; 144];
    let err = quant::quantize_row(GgmlType::Q4_K, &[0.0; 256], &mut bytes).unwrap_err();
    assert_eq!(
        err,
        QuantError::Unsupported {
            ty: GgmlType::Q4_K,
            op: "quantize"
        }
    );
    assert!(err.to_string().contains("Q4_K"), "{err}");
    let mut f = [0.0f32; 3];
    assert!(matches!(
        fp8::e4m3_to_f32_slice(&[0u8; 2], &mut f),
        Err(QuantError::LengthMismatch { src: 2, dst: 3, .. })
    ));
}
