//! Fuzz the GGUF parser on arbitrary bytes. On success, check the invariants `GgufHeader::parse`
//! promises, walk every value, rebuild the file with `GgufWriter` and re-parse it (metadata and
//! tensor data must survive), and run the typed-config builder. Any panic is a bug.
#![no_main]

use kvspool::gguf::{GgufFile, GgufHeader, GgufWriter, ModelConfig, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match GgufFile::parse_bytes(data) {
        Ok(h) => check(&h, data),
        Err(e) => {
            // Messages must render, on one line.
            assert!(!e.to_string().contains('\n'));
        }
    }
});

fn check(h: &GgufHeader, data: &[u8]) {
    assert!(h.version() == 2 || h.version() == 3);
    assert!(h.alignment().is_power_of_two());
    assert!(h.data_offset() >= h.header_size() && h.data_offset() % h.alignment() == 0);
    for (k, v) in h.metadata() {
        assert!(std::ptr::eq(h.get(k).expect("indexed key"), v));
        walk(v, 0);
    }
    let mut ranges = Vec::new();
    for t in h.tensors() {
        assert!(std::ptr::eq(h.tensor(&t.name).expect("indexed tensor"), t));
        assert!((1..=4).contains(&t.dims.len()) && !t.dims.contains(&0));
        assert_eq!(t.offset % h.alignment(), 0);
        assert!(t.offset >= h.data_offset() && t.end() <= data.len() as u64);
        assert_eq!(Some(t.n_bytes), t.row_bytes().checked_mul(t.n_rows()));
        ranges.push((t.offset, t.end()));
    }
    ranges.sort_unstable();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0), "overlap");

    rebuild(h, data);

    match ModelConfig::from_header(h, "fuzz") {
        Ok(c) => {
            let full = c.full_attention_layers();
            assert!(full.len() <= c.n_layer());
            assert!(c.kv_bytes_per_token(2.0) >= 0.0);
            let _ = (
                c.arch_name(),
                c.n_head_kv(),
                c.head_dim(),
                c.context_length(),
            );
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
}

fn walk(v: &Value, depth: usize) {
    let _ = (
        v.as_u64(),
        v.as_i64(),
        v.as_f32(),
        v.as_bool(),
        v.as_str(),
        v.type_name(),
    );
    let _ = v.to_string();
    if let Some(a) = v.as_array() {
        assert!(depth < kvspool::gguf::MAX_ARRAY_DEPTH);
        let t = a.first().map(Value::type_name);
        for x in a {
            assert_eq!(Some(x.type_name()), t, "heterogeneous array");
            walk(x, depth + 1);
        }
    }
}

/// Whatever the reader accepts, the writer must reproduce.
fn rebuild(h: &GgufHeader, data: &[u8]) {
    let mut w = GgufWriter::new();
    w.set_version(h.version()).expect("version");
    for (k, v) in h.metadata() {
        w.add_metadata(k.clone(), v.clone())
            .expect("writer accepts parsed metadata");
    }
    let mut chunks = Vec::new();
    for t in h.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ty)
            .expect("writer accepts parsed tensor");
        chunks.push(&data[t.offset as usize..t.end() as usize]);
    }
    let bytes = w.to_bytes(&chunks).expect("to_bytes");
    let h2 = GgufFile::parse_bytes(&bytes).expect("rebuilt file parses");
    assert_eq!(h2.alignment(), h.alignment());
    assert_eq!(
        format!("{:?}", h2.metadata()),
        format!("{:?}", h.metadata())
    );
    assert_eq!(h2.tensors().len(), h.tensors().len());
    for (a, b) in h.tensors().iter().zip(h2.tensors()) {
        assert_eq!(
            (&a.name, &a.dims, a.ty, a.n_bytes),
            (&b.name, &b.dims, b.ty, b.n_bytes)
        );
        assert_eq!(
            &data[a.offset as usize..a.end() as usize],
            &bytes[b.offset as usize..b.end() as usize]
        );
    }
}
