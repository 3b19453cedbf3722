//! The fuzz targets' corpora (fuzz/corpus/<target>/), replayed on the stable toolchain in
//! every test run, each input also mutated a few hundred ways (deterministically): what the
//! fuzzers found interesting, and anything it crashed on once, stays covered. The fuzzers
//! themselves run by hand (fuzz/Cargo.toml says how); docs/SECURITY.md records their runs.

use std::path::PathBuf;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("mux_session", warren_mux::fuzzing::session),
    ("rpc_messages", warren_proto::fuzzing::messages),
    ("proxy_header", warren_edge::fuzzing::proxy_header),
    ("client_hello", warren_edge::fuzzing::client_hello),
    ("policy", warren_policy::fuzzing::policy),
    ("config", warren_agent::fuzzing::config),
];

/// Mutations per corpus input.
const MUTATIONS: usize = 200;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Bit flips, byte changes, cuts and duplications, from a seeded xorshift.
fn mutate(input: &[u8], seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = input.to_vec();
    for _ in 0..1 + next() % 4 {
        if v.is_empty() {
            v.push(next() as u8);
            continue;
        }
        let at = (next() as usize) % v.len();
        match next() % 5 {
            0 => v[at] ^= 1 << (next() % 8),
            1 => v[at] = next() as u8,
            2 => v.truncate(at),
            3 => {
                let piece: Vec<u8> = v[at..].iter().take(64).copied().collect();
                v.splice(at..at, piece);
            }
            _ => v.insert(at, [0, 0xFF, b'{', b'"', b'\\', 0x80][next() as usize % 6]),
        }
    }
    v
}

#[test]
fn every_corpus_input_and_its_mutations_run_without_panicking() {
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "fuzz/corpus/{target} has inputs");
        for (name, input) in &inputs {
            let r = std::panic::catch_unwind(|| run(input));
            assert!(r.is_ok(), "{target}: corpus input {name} panics");
            for seed in 0..MUTATIONS as u64 {
                let m = mutate(input, seed ^ name.len() as u64);
                let r = std::panic::catch_unwind(|| run(&m));
                assert!(r.is_ok(), "{target}: mutation {seed} of {name} panics: {m:?}");
            }
        }
    }
}
