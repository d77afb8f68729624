//! The tokenizer against llama.cpp's own tokenizer test vectors (`models/ggml-vocab-*.gguf` with
//! `.inp`/`.out`, as `test-tokenizer-0` reads them) for every vocabulary there whose
//! pre-tokenizer we support: gpt-2, starcoder, refact, command-r (the smollm family), llama-bpe, mpt.
//!
//! Needs the peer's source tree (`tools/build-llama-cpp.sh`), so it is `#[ignore]`d; run it with
//! `cargo test --test tokenizer_llama_vocabs -- --ignored`. It fails (does not skip) when the
//! source tree is missing.

use kvspool::gguf::GgufFile;
use kvspool::tokenizer::Tokenizer;

#[test]
#[ignore = "needs the llama.cpp source tree from tools/build-llama-cpp.sh"]
fn llama_cpp_vocab_test_vectors() {
    let dir = kvspool::paths::cache_dir().join("llama.cpp-b11434/src/models");
    assert!(
        dir.is_dir(),
        "{} not found: run tools/build-llama-cpp.sh",
        dir.display()
    );
    const SEP: &str = "\n__ggml_vocab_test__\n";
    let mut bad = Vec::new();
    let mut total = 0;
    for (name, pre) in [
        ("gpt-2", "gpt-2"),
        ("starcoder", "starcoder"),
        ("refact", "refact"),
        ("command-r", "command-r"),
        ("llama-bpe", "llama-bpe"),
        ("mpt", "mpt"),
    ] {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tok = Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tok.pre_tokenizer(), pre);
        let read = |ext: &str| {
            std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.{ext}"))).unwrap()
        };
        let (inp, out) = (read("inp"), read("out"));
        // test-tokenizer-0: split on the separator; a trailing separator adds no empty test.
        let mut inputs: Vec<&str> = inp.split(SEP).collect();
        if inp.ends_with(SEP) {
            inputs.pop();
        }
        let outputs: Vec<&str> = out.lines().collect();
        assert_eq!(
            inputs.len(),
            outputs.len(),
            "{name}: .inp and .out disagree"
        );
        for (text, line) in inputs.iter().zip(&outputs) {
            let want: Vec<u32> = line
                .split_whitespace()
                .map(|x| x.parse().expect("id"))
                .collect();
            // test-tokenizer-0: add_special = false, parse_special = false.
            let got = tok.encode_with(text, false, false);
            total += 1;
            if got != want {
                bad.push(format!(
                    "{name} {text:?}\n  llama.cpp {want:?}\n  kvspool   {got:?}"
                ));
            }
        }
    }
    assert!(total >= 6 * 40, "only {total} test vectors");
    assert!(
        bad.is_empty(),
        "{} of {total} differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
