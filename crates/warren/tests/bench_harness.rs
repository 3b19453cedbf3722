//! The benchmark harness (`bench/`) is not run by the test suite (figures come from
//! `bench/run-all.sh`, see docs/BENCHMARKS.md), but it must stay runnable: every script
//! parses, and the delay line compiles.

use std::path::PathBuf;
use std::process::Command;

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench")
}

#[test]
fn every_bench_script_parses() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(bench_dir())
        .expect("bench/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.sort();
    for want in [
        "run-all.sh",
        "warren-setup.sh",
        "conns.sh",
        "connrate.sh",
        "https.sh",
        "netem.sh",
        "overload.sh",
        "syscalls.sh",
        "instructions.sh",
        "events.sh",
        "cluster.sh",
        "medians.sh",
        "policy.sh",
        "pool.sh",
        "memory.sh",
        "vm.sh",
    ] {
        assert!(scripts.iter().any(|p| p.ends_with(want)), "bench/{want} is missing");
    }
    for s in &scripts {
        let out = Command::new("bash").arg("-n").arg(s).output().expect("bash runs");
        assert!(
            out.status.success(),
            "{} does not parse: {}",
            s.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_delay_line_compiles() {
    let script = bench_dir().join("delayline.py");
    let code = format!("import ast,sys; ast.parse(open({:?}).read())", script.display().to_string());
    let out = Command::new("python3").arg("-c").arg(code).output().expect("python3 runs");
    assert!(out.status.success(), "bench/delayline.py: {}", String::from_utf8_lossy(&out.stderr));
}
