//! Print the markdown table of medians from the last
//! `cargo bench -p homeport-bench --bench core` run:
//! `cargo run -p homeport-bench --example bench_table [criterion dir]`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(homeport_bench::criterion_dir, PathBuf::from);
    println!(
        "Criterion medians:\n\n{}",
        homeport_bench::markdown_table(&dir)
    );
    if let Ok(t) = std::fs::read_to_string(dir.join("homeport-interleaved.md")) {
        println!(
            "Interleaved medians (300 rounds, ratios are medians of per-round ratios):\n\n{t}"
        );
    }
}
