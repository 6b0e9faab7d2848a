//! `trimmer-e2e`: the checking leaf, the workload files and the gRPC load generator for the
//! end-to-end harness in `benches/e2e/`. Test support, built only with the `testkit` feature; never part of the
//! `trimmer` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use feature_trimmer::loadtest::{self, grpc::LoadPlan};

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

/// The leaf, workload files and gRPC load generator of the end-to-end harness in `benches/e2e/`.
#[derive(Parser)]
#[command(name = "trimmer-e2e")]
enum BenchCommand {
    /// A leaf that parses every body and counts full, correctly trimmed and wrong ones.
    Leaf {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        workload: String,
    },
    /// Write a workload's body, allowlist and bundle into a directory.
    Workload {
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Send a gRPC workload's message over h2c at a fixed rate (open loop); print a JSON report
    /// (latency from each request's scheduled send time).
    GrpcLoad {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        workload: String,
        /// Requests per second.
        #[arg(long)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 6.0)]
        duration: f64,
        /// h2c connections, used in turn.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Seconds to wait for answers after the last send.
        #[arg(long, default_value_t = 10.0)]
        grace: f64,
    },
}

fn main() -> ExitCode {
    let command = BenchCommand::parse();
    let name = match &command {
        BenchCommand::Leaf { workload, .. } => workload,
        BenchCommand::Workload { name, .. } => name,
        BenchCommand::GrpcLoad { workload, .. } => workload,
    };
    let Some(workload) = loadtest::by_name(name) else {
        eprintln!(
            "trimmer-e2e: no workload named {name} (tfs-rows, kserve-json, kserve-binary, small, \
             tfs-text, kserve-grpc, kserve-grpc-batch)"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    if let BenchCommand::Workload { dir, .. } = &command {
        return finish(loadtest::write_workload(&workload, dir));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trimmer-e2e: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        BenchCommand::Workload { .. } => Ok(()),
        BenchCommand::Leaf { listen, .. } => {
            runtime.block_on(loadtest::serve_leaf(listen, workload))
        }
        BenchCommand::GrpcLoad {
            target,
            rate,
            duration,
            connections,
            grace,
            ..
        } => {
            if !(rate > 0.0 && duration > 0.0 && grace >= 0.0 && connections > 0) {
                eprintln!("trimmer-e2e: --rate, --duration and --connections must be positive");
                return ExitCode::from(EXIT_USAGE);
            }
            let plan = LoadPlan {
                rate,
                duration: Duration::from_secs_f64(duration),
                connections,
                grace: Duration::from_secs_f64(grace),
            };
            runtime
                .block_on(loadtest::grpc::load(target, &workload, &plan))
                .and_then(|report| {
                    serde_json::to_writer(std::io::stdout(), &report).map_err(std::io::Error::other)
                })
        }
    };
    finish(result)
}

fn finish(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trimmer-e2e: {e}");
            ExitCode::FAILURE
        }
    }
}
