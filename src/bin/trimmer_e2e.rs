//! `trimmer-e2e`: the checking leaf and the workload files for the end-to-end harness in
//! `benches/e2e/`. Test support, built only with the `testkit` feature; never part of the
//! `trimmer` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use feature_trimmer::loadtest;

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

/// The leaf and workload files of the end-to-end harness in `benches/e2e/`.
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
}

fn main() -> ExitCode {
    let command = BenchCommand::parse();
    let name = match &command {
        BenchCommand::Leaf { workload, .. } => workload,
        BenchCommand::Workload { name, .. } => name,
    };
    let Some(workload) = loadtest::by_name(name) else {
        eprintln!(
            "trimmer-e2e: no workload named {name} (tfs-rows, kserve-json, kserve-binary, small)"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let result = match command {
        BenchCommand::Workload { dir, .. } => loadtest::write_workload(&workload, &dir),
        BenchCommand::Leaf { listen, .. } => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(loadtest::serve_leaf(listen, workload)),
            Err(e) => {
                eprintln!("trimmer-e2e: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trimmer-e2e: {e}");
            ExitCode::FAILURE
        }
    }
}
