//! `kvspool profile`: trace parsing, aggregation, errors, `--json` shape and the SVG.

use kvspool::profile::{aggregate, parse_trace, render_svg, render_text, ProfileError};
use std::path::Path;
use std::process::Command;

fn line(
    step: u64,
    layer: usize,
    n_tokens: u64,
    counts: [u64; 4],
    bytes: u64,
    extra: &str,
) -> String {
    let [hits, pf, late, misses] = counts;
    format!(
        "{{\"step\":{step},\"layer\":{layer},\"t_s\":{t},\"dur_s\":0.5,\"n_tokens\":{n_tokens},\
         \"blocks_read\":{b},\"hits\":{hits},\"prefetch_hits\":{pf},\"late\":{late},\"misses\":{misses},\
         \"bytes_read\":{bytes},\"bytes_written\":100,\"stall_s\":0.25,\"evictions\":1,\"write_behind\":0,\
         \"ram_resident_bytes\":{r},\"ram_peak_bytes\":{r}{extra}}}",
        t = step as f64 + layer as f64 * 0.1,
        b = hits + pf + late + misses,
        r = 1000 * step,
    )
}

/// Two steps (a 4-token prefill chunk, then a decode step) over layers 0 (no blocks) and 1.
fn small_trace() -> String {
    [
        line(1, 0, 4, [0, 0, 0, 0], 0, ""),
        line(1, 1, 4, [2, 1, 1, 0], 4096, ""),
        line(2, 0, 1, [0, 0, 0, 0], 0, ""),
        line(2, 1, 1, [3, 2, 0, 3], 8192, ""),
    ]
    .join("\n")
        + "\n"
}

#[test]
fn aggregates_known_totals() {
    let lines = parse_trace(small_trace().as_bytes(), Path::new("t.jsonl")).unwrap();
    let p = aggregate(lines);
    assert_eq!(p.layers.len(), 2);
    let l1 = &p.layers[1].c;
    assert_eq!(p.layers[1].layer, 1);
    assert_eq!(
        (
            l1.blocks_read,
            l1.hits,
            l1.prefetch_hits,
            l1.late,
            l1.misses
        ),
        (12, 5, 3, 1, 3)
    );
    assert!((l1.hit_rate - 8.0 / 12.0).abs() < 1e-12);
    assert_eq!(l1.bytes_read, 12288);
    assert_eq!(l1.bytes_written, 200);
    assert!((l1.stall_s - 0.5).abs() < 1e-12);
    assert!((l1.stall_share - 0.5).abs() < 1e-12);
    let t = &p.total;
    assert_eq!(t.c.calls, 4);
    assert_eq!((t.c.steps, t.c.decode_steps, t.c.prefill_steps), (2, 1, 1));
    assert_eq!(t.c.blocks_read, 12);
    assert_eq!(t.c.evictions, 4);
    assert!((t.c.stall_s - 1.0).abs() < 1e-12);
    assert!((t.c.dur_s - 2.0).abs() < 1e-12);
    assert_eq!(t.layers, 2);
    assert_eq!(t.layers_with_blocks, 1);
    assert_eq!(t.ram_peak_bytes, 2000);
    assert!((t.wall_s - 2.1).abs() < 1e-12);
    assert!(t.c.precision.is_none());
    // Layer 0 read nothing: not in the table; totals are.
    let text = render_text(&p);
    let rows: Vec<&str> = text.lines().collect();
    assert!(
        rows[0].starts_with("trace: 4 calls, 2 steps (1 decode, 1 prefill)"),
        "{text}"
    );
    assert!(rows[2].trim_start().starts_with("1 "), "{text}");
    assert!(rows[3].trim_start().starts_with("all "), "{text}");
    assert!(text.contains("66.67%"), "{text}");
}

#[test]
fn unknown_fields_are_ignored_and_numeric_ones_summed() {
    let t = [
        line(1, 3, 1, [4, 0, 0, 0], 0, ",\"predicted\":8,\"predicted_used\":6,\"est_mass\":0.5,\"selected_blocks\":[1,2],\"note\":\"x\""),
        line(2, 3, 1, [4, 0, 0, 0], 0, ",\"predicted\":2,\"predicted_used\":2,\"est_mass\":0.25"),
    ]
    .join("\n");
    let p = aggregate(parse_trace(t.as_bytes(), Path::new("t")).unwrap());
    let c = &p.layers[0].c;
    assert_eq!(c.extra.get("predicted"), Some(&10.0));
    assert_eq!(c.extra.get("predicted_used"), Some(&8.0));
    assert_eq!(c.extra.get("est_mass"), Some(&0.75));
    assert!(!c.extra.contains_key("selected_blocks") && !c.extra.contains_key("note"));
    assert!((c.precision.unwrap() - 0.8).abs() < 1e-12);
    let q = c.prediction.as_ref().unwrap();
    assert_eq!(q.predicted, 10);
    assert!((q.order_precision.unwrap() - 0.8).abs() < 1e-12);
    assert!((q.order_recall.unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(q.spec_precision, None);
    let text = render_text(&p);
    assert!(
        text.contains("prediction (") && text.contains("80.0%"),
        "{text}"
    );
    // The prediction counters go to their own table, not the extra columns.
    assert!(!text.contains("predicted_used"), "{text}");
}

#[test]
fn prediction_table_scores_both_predictors_and_prefetch_use() {
    // 10 blocks read: 2 hits, 5 prefetch hits, 1 late, 2 demand misses; the order predictor
    // named 6 (4 used), speculation named 8 (7 used); 8 prefetch reads, lead 10 ms in total.
    let extra = ",\"predicted\":6,\"predicted_used\":4,\"spec_predicted\":8,\"spec_used\":7,\"speculations\":1,\"prefetch_reads\":8,\"prefetch_unused\":2,\"prefetch_lead_s\":0.01,\"sparse_candidates\":40,\"sparse_selected\":10";
    let t = line(1, 1, 1, [2, 5, 1, 2], 0, extra);
    let p = aggregate(parse_trace(t.as_bytes(), Path::new("t")).unwrap());
    let q = p.total.c.prediction.clone().unwrap();
    let close = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() < 1e-9;
    assert!(close(q.order_precision, 4.0 / 6.0));
    assert!(close(q.order_recall, 0.4));
    assert!(close(q.spec_precision, 7.0 / 8.0));
    assert!(close(q.spec_recall, 0.7));
    assert!(close(q.prefetch_used, 6.0 / 8.0));
    assert!(close(q.coverage, 0.8));
    assert!(close(q.mean_lead_ms, 2.0));
    assert!(close(q.sparse_read_fraction, 0.25));
    let text = render_text(&p);
    assert!(
        text.contains("87.5%") && text.contains("75.0%") && text.contains("2.00"),
        "{text}"
    );
}

#[test]
fn malformed_line_names_file_and_line() {
    let t = format!(
        "{}\n\n{{\"step\":1,\"layer\":\n",
        line(1, 0, 1, [1, 0, 0, 0], 0, "")
    );
    let e = parse_trace(t.as_bytes(), Path::new("bad.jsonl")).unwrap_err();
    assert!(matches!(e, ProfileError::Parse { line: 3, .. }), "{e:?}");
    assert!(e.to_string().starts_with("bad.jsonl:3: "), "{e}");
    // A missing documented field and a wrong type are errors too, not panics.
    let t = "{\"step\":1,\"layer\":0}\n";
    let e = parse_trace(t.as_bytes(), Path::new("x")).unwrap_err();
    assert!(
        e.to_string().starts_with("x:1: ") && e.to_string().contains("missing field"),
        "{e}"
    );
    let t = line(1, 0, 1, [1, 0, 0, 0], 0, "").replace("\"hits\":1", "\"hits\":-1");
    let e = parse_trace(t.as_bytes(), Path::new("x")).unwrap_err();
    assert!(matches!(e, ProfileError::Parse { line: 1, .. }), "{e:?}");
}

#[test]
fn empty_trace_is_an_error_with_a_hint() {
    let e = parse_trace("\n \n".as_bytes(), Path::new("empty.jsonl")).unwrap_err();
    assert!(matches!(e, ProfileError::Empty { .. }));
    assert!(e.to_string().contains("--trace"), "{e}");
}

#[test]
fn svg_renders_in_memory() {
    let p = aggregate(parse_trace(small_trace().as_bytes(), Path::new("t")).unwrap());
    let svg = render_svg(&p, "title").unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    assert!(svg.contains("hit rate") && svg.contains("time (s)"));
}

#[test]
fn binary_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    std::fs::write(&trace, small_trace()).unwrap();
    let svg = dir.path().join("out.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_kvspool"))
        .args([
            "profile",
            trace.to_str().unwrap(),
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1]["layer"], 1);
    assert_eq!(layers[1]["blocks_read"], 12);
    assert_eq!(layers[1]["late"], 1);
    assert_eq!(v["total"]["steps"], 2);
    assert_eq!(v["total"]["decode_steps"], 1);
    assert_eq!(v["total"]["ram_peak_bytes"], 2000);
    assert!(v["total"]["hit_rate"].as_f64().unwrap() > 0.66);
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") || s.starts_with("<?xml"));
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn binary_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.jsonl");
    std::fs::write(&trace, "not json\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvspool"))
        .args(["profile", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:1:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::write(&trace, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvspool"))
        .args(["profile", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

#[test]
fn from_step_keeps_only_the_later_steps() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    std::fs::write(&trace, small_trace()).unwrap();
    let p = kvspool::profile::load_from_step(&trace, 2).unwrap();
    assert_eq!(p.total.c.steps, 1);
    assert_eq!(p.total.c.blocks_read, 8);
    assert_eq!(p.total.c.misses, 3);
    let out = Command::new(env!("CARGO_BIN_EXE_kvspool"))
        .args(["profile", "--from-step", "2", "--json"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"]["blocks_read"], 8, "{v}");
}
