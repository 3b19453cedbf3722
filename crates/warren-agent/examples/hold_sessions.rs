//! Holds many agent sessions to one edge from one process, for `bench/memory.sh` (issue #22:
//! the edge's memory per idle agent session). Each session binds one http endpoint with a
//! random name, forwarding to `UPSTREAM` (never visited), and then stays idle but for
//! heartbeats.
//!
//! ```sh
//! cargo build --release -p warren-agent --example hold_sessions
//! target/release/examples/hold_sessions CONNECT_URL CA_PEM AUTHTOKEN COUNT [PARALLEL] [UPSTREAM]
//! ```
//!
//! Prints `online N failed F` once every session is up or has failed, then waits for a line on
//! stdin: `check` prints how many are still online, `quit` (or end of input) stops them all.

use std::time::Duration;

use std::io::BufRead;
use warren_agent::config::{AgentConfig, ConnectCas, EndpointConfig};
use warren_agent::{Agent, Status};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: hold_sessions CONNECT_URL CA_PEM AUTHTOKEN COUNT [PARALLEL] [UPSTREAM]");
        std::process::exit(2);
    }
    let count: usize = args[4].parse().expect("COUNT is a number");
    let parallel: usize = args.get(5).map_or(100, |p| p.parse().expect("PARALLEL is a number"));
    let upstream = args.get(6).cloned().unwrap_or_else(|| "127.0.0.1:9".to_owned());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let config = || {
            let mut c =
                AgentConfig::new(args[3].clone(), args[1].clone(), ConnectCas::Pem(args[2].clone().into()));
            let mut ep = EndpointConfig::http(&upstream, None).expect("endpoint");
            ep.inspect = false;
            c.endpoints.push(ep);
            c.web_addr = None;
            c
        };
        let mut agents = Vec::with_capacity(count);
        let mut failed = 0;
        let started = std::time::Instant::now();
        let mut next = 0;
        while next < count {
            let batch: Vec<Agent> =
                (next..count.min(next + parallel)).map(|_| Agent::start(config())).collect();
            next += batch.len();
            // Every agent of the batch is already dialing; wait for each in turn.
            for mut a in batch {
                let ok = tokio::time::timeout(Duration::from_secs(60), a.wait_online()).await;
                if matches!(ok, Ok(Ok(_))) {
                    agents.push(a);
                } else {
                    failed += 1;
                    eprintln!("a session failed: {:?}", *a.status().borrow());
                }
            }
        }
        println!("online {} failed {failed} in {:.1}s", agents.len(), started.elapsed().as_secs_f64());
        // tokio's stdin is not among the workspace's features: a thread reads it.
        let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            match line.trim() {
                "check" => {
                    let online = agents
                        .iter()
                        .filter(|a| matches!(*a.status().borrow(), Status::Online { .. }))
                        .count();
                    println!("online {online}");
                }
                "quit" => break,
                _ => {}
            }
        }
        for a in agents {
            let _ = a.stop().await;
        }
    });
}
