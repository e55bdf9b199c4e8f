//! Times the phases of the Python analysis on one thread over the files listed on
//! standard input (one path per line): `cargo run --release --example profile_phases`.

use std::io::BufRead;
use std::time::Instant;

use aiswa_core::languages::{self, Source};

fn main() {
    let paths: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .collect();
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).unwrap_or_default())
        .collect();
    let bytes: usize = files.iter().map(Vec::len).sum();
    let megabytes = bytes as f64 / 1e6;

    // PHASE=analyze runs only the full analysis, for profilers.
    let only_analyze = std::env::var("PHASE").is_ok_and(|phase| phase == "analyze");
    let start = Instant::now();
    for content in files.iter().filter(|_| !only_analyze) {
        let text = std::str::from_utf8(content).unwrap_or("");
        let _ = ruff_python_parser::parse_module(text);
    }
    let parse = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for content in files.iter().filter(|_| !only_analyze) {
        let text = std::str::from_utf8(content).unwrap_or("");
        let mut count = 0usize;
        languages::python::tokenizer::tokenize(text, &mut |_| count += 1);
    }
    let tokenize = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for (path, content) in paths.iter().zip(&files) {
        let _ = languages::for_path(path).analyze(path, Source::Bytes(content));
    }
    let analyze = start.elapsed().as_secs_f64();

    println!("{} files, {megabytes:.1} MB", files.len());
    for (name, seconds) in [
        ("ruff parse", parse),
        ("tokenize", tokenize),
        ("analyze", analyze),
    ] {
        println!(
            "{name:>12}: {seconds:.3} s, {:.1} MB/s",
            megabytes / seconds
        );
    }
}
