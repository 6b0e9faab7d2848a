//! `trimmer bundle …`: the command line of the offline pipeline (schema, build, validate, diff,
//! publish, rollback), to a directory or an object store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::build::{self as pipeline, VersionRef};
use super::publish;
use crate::bundle::store::write_atomically;
use crate::bundle::Bundle;
use crate::objstore;

#[derive(Subcommand)]
pub enum BundleCommand {
    /// Print the JSON Schema of the bundle format.
    Schema,
    /// Build a bundle from model signatures (and a policy).
    Build {
        /// Bundle name (the installed file is NAME.json).
        #[arg(long)]
        bundle: String,
        /// Directory of signatures: files, or DIR/MODEL/VERSION/<file>.
        #[arg(long, required_unless_present = "signatures_from")]
        signatures: Option<PathBuf>,
        /// A running leaf (http://HOST:PORT) to ask for the signatures of every --model.
        #[arg(long, value_name = "URL", requires = "model")]
        signatures_from: Option<String>,
        /// A model version to ask the leaf for (MODEL@VERSION; repeat).
        #[arg(long, value_name = "MODEL@VERSION", requires = "signatures_from")]
        model: Vec<VersionRef>,
        /// Policy file (TOML): stages, modes, labels.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The previous generation of this bundle (enables the rollout checks).
        #[arg(long)]
        previous: Option<PathBuf>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// TF Serving signature to read from metadata responses.
        #[arg(long, default_value = "serving_default")]
        signature: String,
        /// A version that may disappear from the previous generation (MODEL@VERSION; repeat).
        #[arg(long, value_name = "MODEL@VERSION")]
        retire: Vec<VersionRef>,
        /// Let a version become current without being present in the previous generation.
        #[arg(long)]
        allow_new_current: bool,
        /// Treat missing or unreadable signatures as errors.
        #[arg(long)]
        strict: bool,
        /// `created_at` to record (default: from SOURCE_DATE_EPOCH, else left out).
        #[arg(long)]
        created_at: Option<String>,
        /// Provenance to record (pipeline run, repository revision).
        #[arg(long)]
        source: Option<String>,
    },
    /// Check bundle files: schema, checksum, invariants (non-zero exit on any problem).
    Validate {
        /// Bundle files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check the rollout invariants against this previous generation.
        #[arg(long)]
        previous: Option<PathBuf>,
        /// With --previous: allow versions to become current without being present before.
        #[arg(long)]
        allow_new_current: bool,
    },
    /// Show what changes between two generations, per model version.
    Diff {
        /// Old bundle file.
        old: PathBuf,
        /// New bundle file.
        new: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Install a bundle into a watched directory atomically, keeping history, or publish it to
    /// an object store (immutable object, then a conditional swap of the pointer).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["dir", "store"])))]
    Publish {
        /// Bundle file.
        file: PathBuf,
        /// The sidecar's bundle directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The fleet's bundle store, s3://BUCKET/PREFIX (endpoint and credentials from AWS_*).
        #[arg(long)]
        store: Option<String>,
        /// Publish even if the generation is not newer than the live one.
        #[arg(long)]
        force: bool,
    },
    /// Restore an earlier generation from the directory's history, or point the store's
    /// pointer back at an earlier object.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["dir", "store"])))]
    Rollback {
        /// Bundle name.
        name: String,
        /// The sidecar's bundle directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The fleet's bundle store, s3://BUCKET/PREFIX (endpoint and credentials from AWS_*).
        #[arg(long)]
        store: Option<String>,
        /// Generation to restore (default: the one before the live one).
        #[arg(long)]
        to: Option<u64>,
    },
}

const EXIT_INVALID: u8 = 1;

/// Runs one `trimmer bundle` command; prints what it did, or every problem (exit 1).
pub fn run(command: BundleCommand) -> ExitCode {
    let result = match command {
        BundleCommand::Schema => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                crate::bundle::format::json_schema()
            );
            Ok(())
        }
        BundleCommand::Build {
            bundle,
            signatures,
            signatures_from,
            model,
            policy,
            previous,
            out,
            signature,
            retire,
            allow_new_current,
            strict,
            created_at,
            source,
        } => (|| {
            let policy = policy
                .map(|p| pipeline::read_policy(&p))
                .transpose()
                .map_err(|e| vec![e])?;
            let previous = previous
                .map(|p| read_bundle(&p))
                .transpose()
                .map_err(|e| vec![e])?;
            let fetched = match &signatures_from {
                Some(leaf) => fetch_signatures(leaf, &model, &signature)?,
                None => Vec::new(),
            };
            let input = pipeline::BuildInput {
                bundle: &bundle,
                signatures: signatures.as_deref(),
                fetched,
                tf_signature: &signature,
                policy: policy.as_ref(),
                previous: previous.as_ref(),
                retire: &retire,
                allow_new_current,
                strict,
                created_at: pipeline::created_at(created_at).map_err(|e| vec![e])?,
                source,
            };
            let built = pipeline::build(&input)?;
            for warning in &built.warnings {
                eprintln!("warning: {warning}");
            }
            let mut text =
                serde_json::to_string_pretty(&built.bundle).map_err(|e| vec![e.to_string()])?;
            text.push('\n');
            write_atomically(&out, text.as_bytes()).map_err(|e| vec![e])?;
            println!(
                "wrote {} (bundle {}, generation {}, {} model versions)",
                out.display(),
                built.bundle.bundle,
                built.bundle.generation,
                built.bundle.models.len()
            );
            Ok(())
        })(),
        BundleCommand::Validate {
            files,
            previous,
            allow_new_current,
        } => (|| {
            let previous = previous
                .map(|p| read_bundle(&p))
                .transpose()
                .map_err(|e| vec![e])?;
            let mut problems = Vec::new();
            for file in &files {
                match read_bundle(file) {
                    Ok(bundle) => {
                        let found = pipeline::invariants(
                            &bundle,
                            previous.as_ref(),
                            &[],
                            allow_new_current,
                        );
                        if found.is_empty() {
                            println!(
                                "{}: ok (bundle {}, generation {})",
                                file.display(),
                                bundle.bundle,
                                bundle.generation
                            );
                        }
                        problems.extend(
                            found
                                .into_iter()
                                .map(|p| format!("{}: {p}", file.display())),
                        );
                    }
                    Err(e) => problems.push(e),
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            }
        })(),
        BundleCommand::Diff { old, new, json } => (|| {
            let (old, new) = (
                read_bundle(&old).map_err(|e| vec![e])?,
                read_bundle(&new).map_err(|e| vec![e])?,
            );
            let diff = super::diff::diff(&old, &new);
            let text = if json {
                serde_json::to_string_pretty(&diff).map_err(|e| vec![e.to_string()])? + "\n"
            } else {
                diff.to_text()
            };
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(())
        })(),
        BundleCommand::Publish {
            file,
            dir,
            store,
            force,
        } => match (dir, store) {
            (Some(dir), _) => publish::publish(&file, &dir, force)
                .map(|(path, bundle)| {
                    println!(
                        "published {} generation {} as {}",
                        bundle.bundle,
                        bundle.generation,
                        path.display()
                    )
                })
                .map_err(|e| vec![e]),
            (None, store) => on_store(store, |url| async move {
                let (bytes, bundle) = publish::publishable(&file)?;
                let written = objstore::publish(&file, bytes, bundle, &url, force).await?;
                println!(
                    "published {} generation {} to {url} as {} (pointer was {})",
                    written.bundle,
                    written.pointer.generation,
                    written.pointer.key,
                    written
                        .previous
                        .map_or("absent".to_owned(), |g| format!("generation {g}"))
                );
                Ok(())
            }),
        },
        BundleCommand::Rollback {
            name,
            dir,
            store,
            to,
        } => match (dir, store) {
            (Some(dir), _) => publish::rollback(&name, &dir, to)
                .map(|generation| {
                    println!(
                        "restored {name} generation {generation} in {}",
                        dir.display()
                    )
                })
                .map_err(|e| vec![e]),
            (None, store) => on_store(store, |url| async move {
                let written = objstore::rollback(&name, &url, to).await?;
                println!(
                    "pointed {name} in {url} at generation {} ({}), was {}",
                    written.pointer.generation,
                    written.pointer.key,
                    written.previous.unwrap_or_default()
                );
                Ok(())
            }),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(problems) => {
            problems.iter().for_each(|p| eprintln!("error: {p}"));
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Asks `leaf` for each model version's signature; every failure is reported.
fn fetch_signatures(
    leaf: &str,
    models: &[VersionRef],
    tf_signature: &str,
) -> Result<Vec<super::signature::Signature>, Vec<String>> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| vec![format!("cannot start the runtime: {e}")])?;
    let (mut fetched, mut problems) = (Vec::new(), Vec::new());
    for m in models {
        let asked = super::signature::fetch_from_leaf(leaf, &m.model, &m.version, tf_signature);
        match runtime.block_on(asked) {
            Ok(signature) => fetched.push(signature),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(fetched)
    } else {
        Err(problems)
    }
}

/// Parses `--store` and runs `command` against it on a runtime.
fn on_store<F, Fut>(store: Option<String>, command: F) -> Result<(), Vec<String>>
where
    F: FnOnce(objstore::StoreUrl) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let url =
        objstore::StoreUrl::parse(store.as_deref().unwrap_or_default()).map_err(|e| vec![e])?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| vec![format!("cannot start the runtime: {e}")])?;
    runtime.block_on(command(url)).map_err(|e| vec![e])
}

/// Reads and checks a bundle file (schema and checksum; any file name).
fn read_bundle(path: &std::path::Path) -> Result<Bundle, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Bundle::parse_document(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}
