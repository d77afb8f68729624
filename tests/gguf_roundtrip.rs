//! Writer → reader round trips, through memory and through files (mmap), and the writer's
//! refusals and atomicity.

mod gguf_util;

use kvspool::gguf::{GgmlType, GgufFile, GgufWriteError, GgufWriter, Value};

#[test]
fn metadata_and_tensors_round_trip_in_memory() {
    let (w, data, bytes) = gguf_util::sample();
    let h = GgufFile::parse_bytes(&bytes).expect("parse");
    assert_eq!(h.version(), 3);
    assert_eq!(h.alignment(), 32);
    // Metadata: same keys, values and order.
    let expected = gguf_util::sample_metadata();
    assert_eq!(h.metadata(), expected.as_slice());
    for (k, v) in &expected {
        assert_eq!(h.get(k), Some(v), "{k}");
    }
    assert_eq!(h.get("absent"), None);
    assert_eq!(h.architecture().expect("arch"), "llama");
    // Tensors: declared order, dims, types; data at the offsets, aligned, not overlapping.
    let names: Vec<&str> = h.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "output_norm.weight",
            "blk.0.ffn_up_exps.weight"
        ]
    );
    assert!(h.data_offset() >= h.header_size() && h.data_offset().is_multiple_of(32));
    for (t, d) in h.tensors().iter().zip(&data) {
        assert_eq!(t.offset % 32, 0);
        assert_eq!(t.n_bytes, d.len() as u64);
        let got = &bytes[t.offset as usize..t.end() as usize];
        assert_eq!(got, d.as_slice(), "{}", t.name);
        assert_eq!(h.tensor(&t.name), Some(t));
    }
    let t = h.tensor("blk.0.ffn_up_exps.weight").expect("tensor");
    assert_eq!(
        (t.n_elements(), t.n_rows(), t.row_bytes()),
        (64 * 16, 16, 34)
    );
    let e = h.tensor("token_embd.weight").expect("tensor");
    assert_eq!(
        (e.ty, e.dims.as_slice(), e.n_rows()),
        (GgmlType::Q8_0, &[32u64, 5][..], 5)
    );
    // The writer's to_bytes is deterministic.
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    assert_eq!(w.to_bytes(&refs).expect("again"), bytes);
}

#[test]
fn file_round_trip_through_mmap_with_custom_alignment_and_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    let mut w = GgufWriter::new();
    w.set_version(2).expect("v2");
    w.add_metadata("general.architecture", Value::String("gpt-oss".into()))
        .expect("meta");
    w.set_alignment(64).expect("alignment");
    w.add_tensor("a", &[3], GgmlType::F32).expect("a");
    w.add_tensor("b", &[256, 2], GgmlType::Q4_K).expect("b");
    w.add_tensor("c", &[2, 2], GgmlType::BF16).expect("c");
    let data = [
        gguf_util::noise(12, 9),
        gguf_util::noise(288, 8),
        gguf_util::noise(8, 7),
    ];
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    w.write_file(&path, &refs).expect("write");

    let f = GgufFile::open(&path).expect("open");
    assert_eq!(f.path(), path.as_path());
    assert_eq!(f.version(), 2);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get("general.alignment"), Some(&Value::U32(64)));
    assert_eq!(f.file_size(), std::fs::metadata(&path).expect("stat").len());
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.architecture().expect("arch"), "gpt-oss");
    for (t, d) in f.tensors().iter().zip(&data) {
        assert_eq!(t.offset % 64, 0, "{}", t.name);
        assert_eq!(f.tensor_bytes(t), d.as_slice(), "{}", t.name);
    }
    // The file ends with the last tensor padded to the alignment.
    assert_eq!(f.file_size() % 64, 0);
    // Nothing else (no temporary file) is left in the directory.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn streaming_in_chunks_matches_whole_tensor_writes() {
    let (w, data, bytes) = gguf_util::sample();
    let mut s = w.write_to(Vec::new()).expect("header");
    for d in &data {
        for chunk in d.chunks(5) {
            s.write_chunk(chunk).expect("chunk");
        }
    }
    assert!(s.current_tensor().is_none());
    assert_eq!(s.finish().expect("finish"), bytes);
}

#[test]
fn writer_refuses_what_the_reader_would_reject() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", Value::U8(1)).expect("k");
    assert!(matches!(
        w.add_metadata("k", Value::U8(2)),
        Err(GgufWriteError::DuplicateKey(_))
    ));
    let mixed = Value::Array(vec![Value::U8(1), Value::I8(1)]);
    assert!(matches!(
        w.add_metadata("m", mixed),
        Err(GgufWriteError::InvalidValue { .. })
    ));
    let mut deep = Value::U8(0);
    for _ in 0..=kvspool::gguf::MAX_ARRAY_DEPTH {
        deep = Value::Array(vec![deep]);
    }
    assert!(matches!(
        w.add_metadata("d", deep),
        Err(GgufWriteError::InvalidValue { .. })
    ));
    for bad in [Value::U32(3), Value::U32(0), Value::U64(32)] {
        assert!(w.add_metadata("general.alignment", bad).is_err());
    }
    assert!(w.set_alignment(24).is_err());
    assert!(w.set_version(1).is_err());
    w.add_tensor("t", &[32], GgmlType::Q8_0).expect("t");
    assert!(matches!(
        w.add_tensor("t", &[32], GgmlType::Q8_0),
        Err(GgufWriteError::DuplicateTensor(_))
    ));
    for dims in [&[][..], &[1, 1, 1, 1, 32][..], &[32, 0][..], &[16][..]] {
        assert!(
            matches!(
                w.add_tensor("u", dims, GgmlType::Q8_0),
                Err(GgufWriteError::InvalidTensor { .. })
            ),
            "{dims:?}"
        );
    }
    assert!(w
        .add_tensor("big", &[1 << 40, 1 << 40], GgmlType::F32)
        .is_err());
}

#[test]
fn tensor_data_must_come_in_order_and_size() {
    let (w, data, _) = gguf_util::sample();
    let mut s = w.write_to(Vec::new()).expect("header");
    assert!(matches!(
        s.write_tensor("output_norm.weight", &data[1]),
        Err(GgufWriteError::DataOrder(_))
    ));
    assert!(matches!(
        s.write_tensor("token_embd.weight", &data[1]),
        Err(GgufWriteError::DataOrder(_))
    ));
    s.write_tensor("token_embd.weight", &data[0])
        .expect("first");
    assert!(
        s.write_chunk(&[0; 29]).is_err(),
        "chunk larger than the tensor"
    );
    s.write_chunk(&data[1][..10]).expect("part");
    assert!(
        s.write_tensor("output_norm.weight", &data[1]).is_err(),
        "tensor already started"
    );
    assert!(matches!(s.finish(), Err(GgufWriteError::DataOrder(_))));
    assert!(w.to_bytes(&[&data[0]]).is_err(), "too few data slices");
}

#[test]
fn a_failed_or_dropped_file_writer_leaves_nothing_behind() {
    let (w, data, _) = gguf_util::sample();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.gguf");
    // Dropped half-way.
    {
        let mut f = w.create(&path).expect("create");
        f.write_tensor("token_embd.weight", &data[0])
            .expect("first");
    }
    // Finished with a tensor missing.
    {
        let mut f = w.create(&path).expect("create");
        f.write_tensor("token_embd.weight", &data[0])
            .expect("first");
        assert!(f.finish().is_err());
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    // An existing file is replaced only by a complete one.
    std::fs::write(&path, b"old").expect("old");
    {
        let _f = w.create(&path).expect("create");
    }
    assert_eq!(std::fs::read(&path).expect("read"), b"old");
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    w.write_file(&path, &refs).expect("write");
    GgufFile::open(&path).expect("complete file");
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    // A missing directory is an I/O error naming the path.
    let e = w
        .create(&dir.path().join("no/such/dir.gguf"))
        .expect_err("no dir");
    assert!(matches!(e, GgufWriteError::Io { .. }), "{e:?}");
}

/// The committed fuzz seeds are what the writer produces today, and make valid configs.
/// Regenerate with `KVSPOOL_WRITE_FUZZ_SEEDS=1 cargo test --test gguf_roundtrip fuzz_seeds`.
#[test]
fn fuzz_seeds_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = std::env::var_os("KVSPOOL_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes) in gguf_util::fuzz_seeds() {
        let h = GgufFile::parse_bytes(&bytes).expect("seed parses");
        kvspool::gguf::ModelConfig::from_header(&h, name).expect("seed config is valid");
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).expect("write seed");
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is stale or missing; rerun with KVSPOOL_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}

#[test]
fn files_and_errors_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GgufFile>();
    send_sync::<kvspool::gguf::GgufHeader>();
    send_sync::<kvspool::gguf::GgufError>();
    send_sync::<kvspool::gguf::ConfigError>();
    send_sync::<GgufWriteError>();
}
