//! Every prefix of a small valid GGUF is rejected (never a panic), and so on for corrupted bytes.

mod gguf_util;

use kvspool::gguf::{GgufError, GgufFile, ModelConfig};
use proptest::prelude::*;

#[test]
fn the_sample_is_valid() {
    let (_, _, bytes) = gguf_util::sample();
    let h = GgufFile::parse_bytes(&bytes).expect("sample parses");
    assert_eq!(h.tensors().len(), 3);
    assert_eq!(h.metadata().len(), gguf_util::sample_metadata().len());
    assert_eq!(
        h.tensors().last().map(|t| t.end()),
        Some(bytes.len() as u64)
    );
}

#[test]
fn every_truncation_is_an_error() {
    let (_, _, bytes) = gguf_util::sample();
    let h = GgufFile::parse_bytes(&bytes).expect("sample parses");
    let header_size = h.header_size() as usize;
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for len in 0..bytes.len() {
        let e = match GgufFile::parse_bytes(&bytes[..len]) {
            Ok(_) => panic!("prefix of {len} of {} bytes parsed", bytes.len()),
            Err(e) => e,
        };
        let kind = match e {
            GgufError::Truncated { .. } => "Truncated",
            GgufError::StringTooLong { .. } => "StringTooLong",
            GgufError::ArrayTooLong { .. } => "ArrayTooLong",
            GgufError::CountTooLarge { .. } => "CountTooLarge",
            GgufError::TensorOutOfBounds { .. } => "TensorOutOfBounds",
            ref other => panic!("prefix {len}: unexpected error {other:?}"),
        };
        *kinds.entry(kind).or_default() += 1;
        // Cut inside the header: the error names a byte offset within the prefix; cut in the
        // data: the message says the file is truncated.
        if len >= header_size {
            assert!(
                matches!(e, GgufError::TensorOutOfBounds { .. }),
                "{len}: {e:?}"
            );
        }
        assert!(
            e.to_string().contains("re-download"),
            "prefix {len}: message gives no remedy: {e}"
        );
    }
    assert!(kinds.len() >= 3, "only {kinds:?}");
}

#[test]
fn every_truncated_file_fails_to_open() {
    // The same through the mmap path, for a sample of lengths (every length would be slow on
    // a shared disk; the in-memory test covers all of them with the same parser).
    let (_, _, bytes) = gguf_util::sample();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.gguf");
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        std::fs::write(&path, &bytes[..len]).expect("write");
        let e = GgufFile::open(&path).expect_err("truncated file opened");
        assert_eq!(e.path(), Some(path.as_path()));
    }
    std::fs::write(&path, &bytes).expect("write");
    GgufFile::open(&path).expect("the whole file opens");
}

#[test]
fn every_single_byte_corruption_of_the_header_is_handled() {
    let (_, _, bytes) = gguf_util::sample();
    let h = GgufFile::parse_bytes(&bytes).expect("sample parses");
    let mut rejected = 0;
    for i in 0..h.header_size() as usize {
        for v in [0x00u8, 0x01, 0x09, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            if b[i] == v {
                continue;
            }
            b[i] = v;
            match GgufFile::parse_bytes(&b) {
                Ok(h) => {
                    // Whatever was accepted must still satisfy the tensor invariants.
                    for t in h.tensors() {
                        assert!(t.end() <= b.len() as u64 && t.offset % h.alignment() == 0);
                    }
                    let _ = ModelConfig::from_header(&h, "corrupt");
                }
                Err(_) => rejected += 1,
            }
        }
    }
    assert!(rejected > 100, "only {rejected} corruptions rejected");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes after a valid magic and version never panic the parser or config builder.
    #[test]
    fn random_bodies_never_panic(version in 2u32..=3, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&body);
        if let Ok(h) = GgufFile::parse_bytes(&b) {
            let _ = ModelConfig::from_header(&h, "random");
        }
    }

    /// Splicing random bytes into the valid sample never panics.
    #[test]
    fn spliced_samples_never_panic(at in 0usize..400, junk in proptest::collection::vec(any::<u8>(), 1..16)) {
        let (_, _, mut b) = gguf_util::sample();
        let at = at.min(b.len());
        let end = (at + junk.len()).min(b.len());
        b.splice(at..end, junk);
        if let Ok(h) = GgufFile::parse_bytes(&b) {
            let _ = ModelConfig::from_header(&h, "spliced");
        }
    }
}
