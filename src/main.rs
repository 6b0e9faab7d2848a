//! The `trimmer` command line: parses arguments and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use feature_trimmer::config::{Config, LogFormat, Overrides};
use feature_trimmer::server::Server;

/// EX_USAGE from sysexits.h: the configuration or command line is wrong.
const EXIT_USAGE: u8 = 64;
/// EX_UNAVAILABLE: a listener could not be bound.
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "trimmer",
    version,
    about = "Trims unused features from ML score requests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Validate a configuration file and every bundle it points at (non-zero on any problem).
    Check {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the whole loop on loopback with the example bundles and print what was saved.
    Demo {
        /// Stay up after the sample traffic and print the URLs to explore.
        #[arg(long)]
        keep_running: bool,
    },
    /// Work with allowlist bundle artefacts.
    #[command(subcommand)]
    Bundle(feature_trimmer::pipeline::cli::BundleCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML); without it the built-in defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Proxy listen address (default 127.0.0.1:8585).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listen address (default 127.0.0.1:9585).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Leaf URL (http://host:port): the only endpoint of the default cluster.
    #[arg(long)]
    upstream: Option<String>,
    /// Bundle directory to watch.
    #[arg(long)]
    bundles: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { args } => serve(args),
        Command::Check { config } => match feature_trimmer::check::check(&config) {
            Ok(lines) => {
                lines.iter().for_each(|line| println!("{line}"));
                ExitCode::SUCCESS
            }
            Err(problems) => {
                problems
                    .iter()
                    .for_each(|problem| eprintln!("{}: {problem}", config.display()));
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Demo { keep_running } => demo(keep_running),
        Command::Bundle(command) => feature_trimmer::pipeline::cli::run(command),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        admin: args.admin,
        upstream: args.upstream,
        bundles: args.bundles,
        log_format: args.log_format,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trimmer: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(config.log_format, "info");
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let code = runtime.block_on(async {
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    });
    // A bundle scan stuck in the kernel (a hung mount) must not hold the exit: the drain is
    // over, nothing else runs on the blocking pool.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn demo(keep_running: bool) -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(feature_trimmer::demo::run(keep_running)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trimmer demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded runtime, or `None` after saying why it could not start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("trimmer: cannot start the runtime: {e}");
            None
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping only on Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
