#!/usr/bin/env python3
"""Generate the bit-exactness fixtures for kvspool's `quant` module.

    python3 tools/gen-quant-fixtures.py            # writes tests/fixtures/quant/*.bin

Needs Python 3 with `numpy`, `gguf` (the gguf-py package from llama.cpp, whose quantizers mirror
ggml's `quantize_row_*_ref`) and `ml_dtypes` (for the OCP float8_e4m3fn reference). The Rust build
and tests never run this script: they read the committed `.bin` files. Output is deterministic
(fixed seed), so re-running it must leave `git status` clean.

File format (all little-endian):

* `<type>.bin` for F16, BF16, Q8_0, Q4_0, Q4_1, MXFP4, and `MXFP4_raw.bin`:
      magic  b"KVQF", u32 version = 1, u32 ggml type id, u32 flags (bit 0: has f32 input and
      the quantized bytes are gguf-py's quantization of it; clear: the bytes are random raw
      blocks), u32 rows, u32 cols, u32 row_bytes,
      then f32[rows*cols] input (only if flag bit 0), u8[rows*row_bytes] quantized bytes,
      u32[rows*cols] bit patterns of gguf-py's dequantization of those bytes.
* `fp8_e4m3.bin`:
      magic b"KVF8", u32 version = 1,
      u32[256] bit patterns of ml_dtypes' float8_e4m3fn -> float32 for every code,
      u32 n, f32[n] inputs, u8[n] ml_dtypes' float32 -> float8_e4m3fn codes (round to nearest
      even). Every input has |x| <= 464 or is NaN: above 464 ml_dtypes gives NaN whereas kvspool
      saturates to +-448, which the Rust tests check separately.
"""
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
import ml_dtypes

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quant"
ROWS = 32
COLS = 64  # two 32-element blocks per row
rng = np.random.default_rng(20240917)


def f32(v):
    return np.array(v, dtype=np.float32)


def bits_to_f32(b):
    return np.array(b, dtype=np.uint32).view(np.float32)


def block_rows():
    """Input rows shared by the block formats: random rows of very different scales plus
    hand-made rows that hit every rounding and edge rule of the reference quantizers."""
    rows = []
    # random normal rows, scales from 1e-6 to 1e4
    for s in np.logspace(-6, 4, 12):
        rows.append(rng.standard_normal(COLS).astype(np.float32) * np.float32(s))
    # random uniform, positive only / negative only (Q4_1 min/max on one side of 0)
    rows.append(rng.uniform(0.5, 3.0, COLS).astype(np.float32))
    rows.append(-rng.uniform(0.5, 3.0, COLS).astype(np.float32))
    rows.append(np.zeros(COLS, np.float32))                       # all zeros
    rows.append(np.full(COLS, 0.7, np.float32))                   # constant row
    rows.append(np.full(COLS, -3.0, np.float32))                  # constant negative row
    rows.append(np.full(COLS, 1e-30, np.float32))                 # tiny: f16 scale underflows
    rows.append(rng.standard_normal(COLS).astype(np.float32) * np.float32(1e-39))  # f32 subnormals
    # signed zeros mixed in
    r = np.zeros(COLS, np.float32)
    r[1::2] = -0.0
    r[7] = 1.0
    r[40] = -2.0
    rows.append(r)
    # Q8_0 ties: amax 127 -> d = 1, id = 1, x*id = k + 0.5 exactly (roundf rounds away from 0)
    r = np.arange(COLS, dtype=np.float32) - 31.5
    r[0] = 127.0
    r[32] = -127.0
    rows.append(r)
    # Q4_0 ties: signed max -8 -> d = 1, id = 1, x + 8.5 truncated; equal |max| ties (first wins)
    r = (np.arange(COLS, dtype=np.float32) % 16) * 0.5 - 4.0
    r[0] = -8.0
    r[5] = 8.0
    r[32] = 5.0
    r[33] = -5.0
    rows.append(r)
    # Q4_1 ties: min 0, max 15 -> d = 1, (x - min)*id + 0.5 truncated
    r = (np.arange(COLS, dtype=np.float32) % 30) * 0.5
    r[0] = 0.0
    r[1] = 15.0
    r[32] = 0.0
    r[33] = 15.0
    rows.append(r)
    # MXFP4: amax just below / at powers of two (floor(log2) rule), and midpoints of the table
    r = np.zeros(COLS, np.float32)
    below = bits_to_f32([0x3FFFFFFF])[0]  # 2 - ulp
    r[:32] = rng.uniform(-1.0, 1.0, 32).astype(np.float32)
    r[3] = below
    r[32:] = rng.uniform(-1.0, 1.0, 32).astype(np.float32)
    r[40] = 4.0
    rows.append(r)
    # values on midpoints between kvalues*d for d = 0.5 (amax = 6 -> e = floor(log2 6) - 2 + 127)
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0],
                    dtype=np.float32)
    r = np.resize(mids, COLS).astype(np.float32)
    r[0] = 6.0
    r[32] = -6.0
    rows.append(r)
    # large magnitudes: f16 scale overflows to inf for the Q4 formats (dequant gives inf/nan)
    rows.append(rng.standard_normal(COLS).astype(np.float32) * np.float32(3e5))
    # one spike per block among small values
    r = rng.standard_normal(COLS).astype(np.float32) * np.float32(1e-3)
    r[17] = 50.0
    r[50] = -70.0
    rows.append(r)
    assert len(rows) <= ROWS, len(rows)
    while len(rows) < ROWS:
        rows.append(rng.standard_normal(COLS).astype(np.float32))
    return np.stack(rows).astype(np.float32)


def float_rows(kind):
    """Inputs for the element-wise F16 / BF16 encoders."""
    n = ROWS * COLS
    v = []
    # log-uniform magnitudes over the whole f32 range, random signs
    e = rng.uniform(-45, 38, n // 2)
    v.extend((np.sign(rng.standard_normal(n // 2)) * 10.0 ** e).astype(np.float32))
    if kind == "F16":
        # near the f16 limits: max 65504, halfway to the next binade 65520 (-> inf), subnormals
        special = [65504.0, 65519.0, 65520.0, 65536.0, -65520.0, 6.1035156e-05, 5.9604645e-08,
                   2.9802322e-08, 2.9802326e-08, 8.940697e-08, 1e-8, 3e-8]
        # exact ties between adjacent f16 values (RNE), odd and even
        h = np.arange(1, 2000, 7, dtype=np.uint16)
        lo = h.view(np.float16).astype(np.float64)
        hi = (h + 1).view(np.float16).astype(np.float64)
        ties = ((lo + hi) / 2).astype(np.float32)
        special.extend(ties.tolist())
        special.extend((-ties[:50]).tolist())
        h = np.arange(0x3C00, 0x3C00 + 64, dtype=np.uint16)
        lo = h.view(np.float16).astype(np.float64)
        hi = (h + 1).view(np.float16).astype(np.float64)
        special.extend(((lo + hi) / 2).astype(np.float32).tolist())
        special.extend([np.inf, -np.inf, np.nan, 0.0, -0.0])
    else:
        # ties of the 16-bit truncation: low half exactly 0x8000, with even and odd kept lsb
        b = rng.integers(0, 0x7F7F, 300, dtype=np.uint32) << 16 | 0x8000
        b[::2] |= 1 << 31
        special = list(b.view(np.float32))
        special.extend(bits_to_f32([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x00008000, 0x00018000,
                                    0x7F800001, 0xFF800001, 0x7FC00000, 0xFFFFFFFF, 0x7F800000,
                                    0xFF800000, 0x00000000, 0x80000000, 0x00000001]).tolist())
    v.extend(special)
    rest = n - len(v)
    assert rest >= 0
    v.extend(rng.standard_normal(rest).astype(np.float32))
    return np.array(v, dtype=np.float32).reshape(ROWS, COLS)


def write_kvqf(name, qtype, data_in, qbytes, deq, flags):
    rows, row_bytes = qbytes.shape
    cols = deq.shape[1]
    with open(OUT / f"{name}.bin", "wb") as f:
        f.write(b"KVQF")
        f.write(struct.pack("<6I", 1, int(qtype), flags, rows, cols, row_bytes))
        if flags & 1:
            f.write(data_in.astype("<f4").tobytes())
        f.write(qbytes.astype(np.uint8).tobytes())
        f.write(deq.astype(np.float32).view("<u4").tobytes())


def gen_quantized(name, qtype, data):
    with np.errstate(all="ignore"):
        q = gguf.quants.quantize(data, qtype)
        q = np.asarray(q).view(np.uint8).reshape(data.shape[0], -1)
        d = gguf.quants.dequantize(q, qtype).astype(np.float32).reshape(data.shape)
    write_kvqf(name, qtype, data, q, d, 1)


def gen_mxfp4_raw():
    n_blocks = ROWS * COLS // 32
    b = rng.integers(0, 256, (n_blocks, 17), dtype=np.uint8)
    # cover the edge scales: e = 0, 1, 2, 127, 128, 254, 255
    for i, e in enumerate([0, 1, 2, 127, 128, 254, 255]):
        b[i, 0] = e
    # one block with every nibble value in both halves (element order check)
    b[8, 1:] = np.arange(16, dtype=np.uint8) | (np.arange(15, -1, -1, dtype=np.uint8) << 4)
    q = b.reshape(ROWS, -1)
    with np.errstate(all="ignore"):
        d = gguf.quants.dequantize(q, T.MXFP4).astype(np.float32).reshape(ROWS, COLS)
    write_kvqf("MXFP4_raw", T.MXFP4, None, q, d, 0)


def gen_fp8():
    e4 = ml_dtypes.float8_e4m3fn
    codes = np.arange(256, dtype=np.uint8)
    dec = codes.view(e4).astype(np.float32)
    pos = np.sort(dec[:0x7F].astype(np.float64))  # finite non-negative values 0 ... 448
    xs = []
    xs.extend(pos.astype(np.float32))
    mids = (pos[:-1] + pos[1:]) / 2  # exact ties, exactly representable in f32
    m32 = mids.astype(np.float32)
    assert np.all(m32.astype(np.float64) == mids)
    xs.extend(m32)
    xs.extend(np.nextafter(m32, np.float32(np.inf)))
    xs.extend(np.nextafter(m32, np.float32(0)))
    xs.extend([460.0, 463.99997, 464.0, 2.0 ** -10, 2.0 ** -11, 1e-30, 1e-40])
    xs.extend(np.exp2(rng.uniform(-12, 8.85, 600)).astype(np.float32))
    xs.extend(rng.standard_normal(200).astype(np.float32))
    xs = np.array(xs, dtype=np.float32)
    xs = np.concatenate([xs, -xs, np.array([np.nan], np.float32)])
    assert np.all((np.abs(xs) <= 464) | np.isnan(xs))
    enc = xs.astype(e4).view(np.uint8)
    with open(OUT / "fp8_e4m3.bin", "wb") as f:
        f.write(b"KVF8")
        f.write(struct.pack("<I", 1))
        f.write(dec.view("<u4").tobytes())
        f.write(struct.pack("<I", len(xs)))
        f.write(xs.astype("<f4").tobytes())
        f.write(enc.tobytes())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    blocks = block_rows()
    gen_quantized("F16", T.F16, float_rows("F16"))
    gen_quantized("BF16", T.BF16, float_rows("BF16"))
    for name, qt in [("Q8_0", T.Q8_0), ("Q4_0", T.Q4_0), ("Q4_1", T.Q4_1), ("MXFP4", T.MXFP4)]:
        gen_quantized(name, qt, blocks)
    gen_mxfp4_raw()
    gen_fp8()
    total = sum(p.stat().st_size for p in OUT.glob("*.bin"))
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
