//! Hand-built hostile GGUF headers: each must be rejected with its specific error variant, and
//! the message must say what and where.

mod gguf_util;

use gguf_util::Raw;
use kvspool::gguf::{
    GgufError, GgufFile, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_METADATA_ENTRIES, MAX_METADATA_VALUES,
    MAX_TENSORS,
};

fn parse_err(bytes: &[u8]) -> GgufError {
    match GgufFile::parse_bytes(bytes) {
        Ok(h) => panic!(
            "expected an error, parsed {} tensors and {} keys",
            h.tensors().len(),
            h.metadata().len()
        ),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "message is not one line: {msg}");
            e
        }
    }
}

/// One F32 tensor [8] at relative offset 0 with its 32 bytes of data.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", dims, ty, offset).pad(32).zeros(data);
    r.done()
}

#[test]
fn minimal_valid_files_parse() {
    // The builders below are only meaningful if their unmodified form is accepted.
    let h = GgufFile::parse_bytes(&Raw::header(3, 0, 0).done()).expect("empty v3");
    assert_eq!(h.version(), 3);
    assert_eq!(h.data_offset(), 32);
    let h = GgufFile::parse_bytes(&Raw::header(2, 0, 0).done()).expect("empty v2");
    assert_eq!(h.version(), 2);
    let h = GgufFile::parse_bytes(&one_tensor(&[8], 0, 0, 32)).expect("one tensor");
    let t = &h.tensors()[0];
    assert_eq!((t.offset, t.n_bytes), (64, 32));
}

#[test]
fn trailing_padding_is_optional() {
    // llama.cpp accepts a file that ends right after the last tensor's data; so do we.
    let h = GgufFile::parse_bytes(&one_tensor(&[7], 0, 0, 28)).expect("unpadded end");
    assert_eq!(h.tensors()[0].end(), h.file_size());
}

#[test]
fn bad_magic_is_not_gguf_and_shows_the_bytes() {
    let mut r = Raw(b"GGML".to_vec());
    r.u32(3).u64(0).u64(0);
    let e = parse_err(&r.done());
    assert!(
        matches!(&e, GgufError::NotGguf { found } if found == b"GGML"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("not a GGUF file"), "{msg}");
    assert!(msg.contains("47 47 4d 4c"), "{msg}");
    assert!(msg.contains("\"GGML\""), "{msg}");
    // A safetensors header (u64 length then '{').
    let e = parse_err(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\"");
    assert!(matches!(e, GgufError::NotGguf { .. }), "{e:?}");
    // A short non-GGUF prefix is "not GGUF" too, but a short GGUF prefix is truncation.
    assert!(matches!(parse_err(b"PK"), GgufError::NotGguf { .. }));
    assert!(matches!(parse_err(b"GGU"), GgufError::Truncated { .. }));
    assert!(matches!(parse_err(b""), GgufError::Truncated { .. }));
}

#[test]
fn version_1_is_rejected_clearly() {
    let e = parse_err(&Raw::header(1, 0, 0).done());
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 1 }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("version 1"), "{msg}");
    assert!(msg.contains("re-convert"), "{msg}");
}

#[test]
fn version_99_and_big_endian_are_rejected() {
    let e = parse_err(&Raw::header(99, 0, 0).done());
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 99 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("version 99"));
    let e = parse_err(&Raw::header(3u32.swap_bytes(), 0, 0).done());
    assert!(e.to_string().contains("big-endian"), "{e}");
}

#[test]
fn huge_tensor_count_is_rejected_before_allocating() {
    let e = parse_err(&Raw::header(3, u64::MAX, 0).done());
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor",
                count: u64::MAX,
                ..
            }
        ),
        "{e:?}"
    );
    // Just one more than the remaining bytes could hold.
    let mut r = Raw::header(3, 2, 0);
    r.zeros(32 * 2 - 1);
    let e = parse_err(&r.done());
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor",
                max: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn counts_above_kvspools_caps_are_rejected_even_if_bytes_remain() {
    let n = MAX_METADATA_ENTRIES + 1;
    let mut r = Raw::header(3, 0, n);
    r.zeros(n as usize * 13);
    let e = parse_err(&r.done());
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "metadata",
                max: MAX_METADATA_ENTRIES,
                ..
            }
        ),
        "{e:?}"
    );
    let n = MAX_TENSORS + 1;
    let mut r = Raw::header(3, n, 0);
    r.zeros(n as usize * 32);
    let e = parse_err(&r.done());
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor",
                max: MAX_TENSORS,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn huge_kv_count_is_rejected_before_allocating() {
    let e = parse_err(&Raw::header(3, 0, 1 << 60).done());
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "metadata",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("at byte 16"), "{e}");
}

#[test]
fn huge_string_length_is_rejected() {
    // As a key length.
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).zeros(20);
    let e = parse_err(&r.done());
    assert!(
        matches!(
            e,
            GgufError::StringTooLong {
                len: u64::MAX,
                offset: 24,
                ..
            }
        ),
        "{e:?}"
    );
    // As a string value.
    let mut r = Raw::header(3, 0, 1);
    r.str("general.name").u32(8).u64(1 << 40).bytes(b"abc");
    let e = parse_err(&r.done());
    assert!(
        matches!(e, GgufError::StringTooLong { len, .. } if len == 1 << 40),
        "{e:?}"
    );
    assert!(e.to_string().contains("general.name"), "{e}");
    // As a tensor name.
    let mut r = Raw::header(3, 1, 0);
    r.u64(1 << 50).zeros(40);
    let e = parse_err(&r.done());
    assert!(matches!(e, GgufError::StringTooLong { .. }), "{e:?}");
}

#[test]
fn invalid_utf8_string_is_rejected() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(2).bytes(&[0xC3, 0x28]);
    let e = parse_err(&r.done());
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }), "{e:?}");
}

#[test]
fn huge_array_length_is_rejected() {
    let mut r = Raw::header(3, 0, 1);
    r.str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(u64::MAX / 2)
        .zeros(64);
    let e = parse_err(&r.done());
    assert!(
        matches!(&e, GgufError::ArrayTooLong { key, elem: "string", .. } if key == "tokenizer.ggml.tokens"),
        "{e:?}"
    );
    // Arrays of u8 are bounded by the remaining byte count exactly.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(0).u64(11).zeros(10);
    let e = parse_err(&r.done());
    assert!(
        matches!(
            e,
            GgufError::ArrayTooLong {
                len: 11,
                remaining: 10,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn too_many_metadata_values_in_total_are_rejected() {
    let n = MAX_METADATA_VALUES + 1;
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(0).u64(n).zeros(n as usize);
    let e = parse_err(&r.done());
    assert!(matches!(e, GgufError::TooManyValues { .. }), "{e:?}");
}

/// `depth` nested arrays, the innermost holding one u8.
fn nested(depth: usize) -> Vec<u8> {
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 1..depth {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(1).u8(7);
    r.done()
}

#[test]
fn deep_nesting_is_rejected() {
    let h = GgufFile::parse_bytes(&nested(MAX_ARRAY_DEPTH)).expect("max depth is accepted");
    let mut v = h.get("deep").expect("key");
    for _ in 0..MAX_ARRAY_DEPTH {
        v = &v.as_array().expect("array")[0];
    }
    assert_eq!(v.as_u64(), Some(7));
    let e = parse_err(&nested(MAX_ARRAY_DEPTH + 1));
    assert!(
        matches!(&e, GgufError::TooDeep { key, .. } if key == "deep"),
        "{e:?}"
    );
    // A long run of nested array headers must not recurse without bound.
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..100_000 {
        r.u32(9).u64(1);
    }
    assert!(matches!(parse_err(&r.done()), GgufError::TooDeep { .. }));
}

#[test]
fn bad_bool_is_rejected() {
    let mut r = Raw::header(3, 0, 1);
    r.str("flag").u32(7).u8(2);
    let e = parse_err(&r.done());
    assert!(
        matches!(&e, GgufError::BadBool { byte: 2, key, .. } if key == "flag"),
        "{e:?}"
    );
    // Inside an array too.
    let mut r = Raw::header(3, 0, 1);
    r.str("flags").u32(9).u32(7).u64(3).u8(0).u8(1).u8(0xff);
    let e = parse_err(&r.done());
    assert!(matches!(e, GgufError::BadBool { byte: 0xff, .. }), "{e:?}");
}

#[test]
fn bad_value_type_is_rejected() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u32(0);
    let e = parse_err(&r.done());
    assert!(
        matches!(&e, GgufError::BadValueType { type_id: 13, key, offset: 33 } if key == "k"),
        "{e:?}"
    );
    // As an array element type.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(0xdead).u64(0);
    let e = parse_err(&r.done());
    assert!(
        matches!(
            e,
            GgufError::BadValueType {
                type_id: 0xdead,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn zero_dim_is_rejected() {
    let e = parse_err(&one_tensor(&[8, 0], 0, 0, 32));
    assert!(
        matches!(&e, GgufError::ZeroDim { name, dims } if name == "t" && dims == &[8, 0]),
        "{e:?}"
    );
}

#[test]
fn dim_count_outside_1_to_4_is_rejected() {
    let e = parse_err(&one_tensor(&[1, 1, 1, 1, 8], 0, 0, 32));
    assert!(
        matches!(e, GgufError::BadDimCount { n_dims: 5, .. }),
        "{e:?}"
    );
    let e = parse_err(&one_tensor(&[], 0, 0, 32));
    assert!(
        matches!(e, GgufError::BadDimCount { n_dims: 0, .. }),
        "{e:?}"
    );
    // A 4-D tensor is fine.
    GgufFile::parse_bytes(&one_tensor(&[2, 2, 1, 2], 0, 0, 32)).expect("4 dims");
}

#[test]
fn element_count_overflow_is_rejected() {
    let e = parse_err(&one_tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 0, 32));
    assert!(matches!(e, GgufError::SizeOverflow { .. }), "{e:?}");
    // Elements fit but bytes do not: 2^62 F32 elements.
    let e = parse_err(&one_tensor(&[1 << 31, 1 << 31], 0, 0, 32));
    assert!(matches!(e, GgufError::SizeOverflow { .. }), "{e:?}");
}

#[test]
fn row_not_a_multiple_of_the_block_size_is_rejected() {
    // Q4_1 (id 3) has blocks of 32.
    let e = parse_err(&one_tensor(&[48, 2], 3, 0, 256));
    assert!(
        matches!(
            e,
            GgufError::RowNotBlockMultiple {
                ne0: 48,
                block: 32,
                ..
            }
        ),
        "{e:?}"
    );
    // Block size 256 for Q4_K (id 12).
    let e = parse_err(&one_tensor(&[128], 12, 0, 256));
    assert!(
        matches!(e, GgufError::RowNotBlockMultiple { block: 256, .. }),
        "{e:?}"
    );
}

#[test]
fn unknown_tensor_types_are_rejected_naming_id_and_tensor() {
    for id in [4u32, 5, 31, 99, u32::MAX] {
        let e = parse_err(&one_tensor(&[32], id, 0, 128));
        assert!(
            matches!(&e, GgufError::UnknownTensorType { type_id, name, .. } if *type_id == id && name == "t"),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("type id {id}")) && msg.contains("\"t\""),
            "{msg}"
        );
    }
}

#[test]
fn misaligned_offset_is_rejected() {
    let e = parse_err(&one_tensor(&[8], 0, 4, 64));
    assert!(
        matches!(
            e,
            GgufError::MisalignedOffset {
                offset: 4,
                alignment: 32,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn out_of_bounds_data_is_rejected() {
    // 32 bytes needed, 31 present.
    let e = parse_err(&one_tensor(&[8], 0, 0, 31));
    assert!(
        matches!(
            e,
            GgufError::TensorOutOfBounds {
                start: 64,
                end: 96,
                file_size: 95,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("re-download"), "{e}");
    // An offset that overflows when added to the data start.
    let e = parse_err(&one_tensor(&[8], 0, u64::MAX - 31, 32));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e:?}");
}

#[test]
fn overlapping_tensors_are_rejected() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .pad(32)
        .zeros(96);
    let e = parse_err(&r.done());
    assert!(
        matches!(&e, GgufError::OverlappingTensors { first, second, .. } if first == "a" && second == "b"),
        "{e:?}"
    );
    // Same start, listed in reverse order.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[8], 0, 64)
        .tensor("b", &[8], 0, 64)
        .pad(32)
        .zeros(128);
    assert!(matches!(
        parse_err(&r.done()),
        GgufError::OverlappingTensors { .. }
    ));
    // Adjacent is fine, in any listing order.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[8], 0, 32)
        .tensor("b", &[8], 0, 0)
        .pad(32)
        .zeros(64);
    GgufFile::parse_bytes(&r.done()).expect("adjacent tensors");
}

#[test]
fn duplicate_key_is_rejected() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a.b", 1).kv_str("a.b", "x");
    let e = parse_err(&r.done());
    assert!(
        matches!(&e, GgufError::DuplicateKey { key, offset: 43 } if key == "a.b"),
        "{e:?}"
    );
}

#[test]
fn duplicate_tensor_is_rejected() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    let e = parse_err(&r.done());
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name, first: 0, second: 1 } if name == "w"),
        "{e:?}"
    );
}

#[test]
fn bad_alignment_is_rejected() {
    for a in [0u32, 3, 48, MAX_ALIGNMENT * 2, 1 << 31] {
        let mut r = Raw::header(3, 0, 1);
        r.kv_u32("general.alignment", a);
        let e = parse_err(&r.done());
        assert!(
            matches!(e, GgufError::BadAlignment { ty: "u32", .. }),
            "{a}: {e:?}"
        );
    }
    // Must be a u32, even if the value is fine.
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(10).u64(32);
    let e = parse_err(&r.done());
    assert!(
        matches!(e, GgufError::BadAlignment { ty: "u64", .. }),
        "{e:?}"
    );
}

/// Found by `cargo fuzz run gguf_parse` (out-of-memory): a file without tensors and
/// `general.alignment = 2^30` parsed, and rewriting it (the fuzz target's writer round trip)
/// padded the header to 1 GiB. Alignments above `MAX_ALIGNMENT` (16 MiB) are now rejected.
#[test]
fn regression_huge_alignment_is_rejected() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 1 << 30);
    let e = parse_err(&r.done());
    assert!(matches!(e, GgufError::BadAlignment { .. }), "{e:?}");
    // The largest accepted alignment still works, tensors or not.
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", MAX_ALIGNMENT);
    let h = GgufFile::parse_bytes(&r.done()).expect("16 MiB alignment");
    assert_eq!(h.data_offset(), u64::from(MAX_ALIGNMENT));
    let mut w = kvspool::gguf::GgufWriter::new();
    assert!(w.set_alignment(MAX_ALIGNMENT * 2).is_err());
}

#[test]
fn custom_alignment_moves_the_data_section() {
    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("general.alignment", 256)
        .tensor("t", &[8], 0, 0)
        .pad(256)
        .zeros(32);
    let h = GgufFile::parse_bytes(&r.done()).expect("aligned to 256");
    assert_eq!(h.alignment(), 256);
    assert_eq!(h.data_offset(), 256);
    assert_eq!(h.tensors()[0].offset, 256);
    // Offset 32 is aligned to the default but not to 256.
    let mut r = Raw::header(3, 1, 1);
    r.kv_u32("general.alignment", 256)
        .tensor("t", &[8], 0, 32)
        .pad(256)
        .zeros(288);
    assert!(matches!(
        parse_err(&r.done()),
        GgufError::MisalignedOffset { alignment: 256, .. }
    ));
}

#[test]
fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hostile.gguf");
    std::fs::write(&path, Raw::header(1, 0, 0).done()).expect("write");
    let e = GgufFile::open(&path).expect_err("version 1");
    assert!(
        matches!(e.root(), GgufError::UnsupportedVersion { version: 1 }),
        "{e:?}"
    );
    assert_eq!(e.path(), Some(path.as_path()));
    assert!(
        e.to_string().starts_with(&path.display().to_string()),
        "{e}"
    );

    let missing = dir.path().join("missing.gguf");
    let e = GgufFile::open(&missing).expect_err("missing");
    assert!(matches!(e, GgufError::Io { op: "open", .. }), "{e:?}");
    assert!(e.to_string().contains("missing.gguf"), "{e}");

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").expect("write");
    let e = GgufFile::open(&empty).expect_err("empty");
    assert!(matches!(e.root(), GgufError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn architecture_must_be_a_string() {
    let h = GgufFile::parse_bytes(&Raw::header(3, 0, 0).done()).expect("empty");
    assert!(matches!(
        h.architecture(),
        Err(GgufError::MissingKey { .. })
    ));
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.architecture", 1);
    let h = GgufFile::parse_bytes(&r.done()).expect("parses");
    assert!(matches!(
        h.architecture(),
        Err(GgufError::WrongType { found: "u32", .. })
    ));
}
