//! `waly ops check|list|docs [FILE]`: check the operations catalog, list its operations, and write its
//! reference documentation.
//!
//! Owns choosing the file and where output goes; what the catalog means and how it is described belong
//! to [`waly::operations`]. It never connects to Postgres or reads the log.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use waly::operations::{Catalog, Operation, docs};

use super::ConfigArgs;

/// The catalog used when neither FILE, `--operations` nor the configuration names one.
const DEFAULT_CATALOG: &str = "config/operations.yaml";

#[derive(Debug, Args)]
pub struct OpsArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: OpsCommand,
}

#[derive(Debug, Subcommand)]
enum OpsCommand {
    /// Check the catalog; print each error as file:line: message and exit 1 when it is invalid.
    Check(CatalogFile),
    /// Print one line per operation: name, version, what it is matched by, parameters (`?`: optional).
    List(CatalogFile),
    /// Print the Markdown reference, or with --out write it and a JSON Schema per operation.
    Docs {
        #[command(flatten)]
        catalog: CatalogFile,
        /// Write DIR/operations.md and DIR/<NAME>.schema.json instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct CatalogFile {
    /// The catalog (default: --operations, the configuration's `operations`, or config/operations.yaml).
    file: Option<PathBuf>,
}

pub fn run(args: OpsArgs) -> anyhow::Result<()> {
    let result = match args.command {
        OpsCommand::Check(catalog) => check(&catalog_path(catalog.file, args.config)?),
        OpsCommand::List(catalog) => list(&catalog_path(catalog.file, args.config)?),
        OpsCommand::Docs { catalog, out } => {
            docs(&catalog_path(catalog.file, args.config)?, out.as_deref())
        }
    };
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// FILE, else `--operations`/WALY_OPERATIONS, else the configuration file's `operations` (read only
/// when one is given), else [`DEFAULT_CATALOG`].
fn catalog_path(file: Option<PathBuf>, config: ConfigArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = file.or_else(|| config.operations.clone()) {
        return Ok(path);
    }
    if config.config.is_some()
        && let Some(path) = config.load()?.operations
    {
        return Ok(path);
    }
    Ok(PathBuf::from(DEFAULT_CATALOG))
}

/// Loads the catalog; when it is invalid, prints every `file:line: message` on stderr and fails.
fn load(path: &Path) -> anyhow::Result<Catalog> {
    match Catalog::load(path) {
        Ok(catalog) => Ok(catalog),
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            let count = errors.0.len();
            let plural = if count == 1 { "" } else { "s" };
            bail!("{}: not loaded, {count} error{plural}", path.display())
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let catalog = load(path)?;
    let count = catalog.operations.len();
    let plural = if count == 1 { "" } else { "s" };
    writeln!(
        std::io::stdout(),
        "{}: ok, {count} operation{plural}",
        path.display()
    )?;
    Ok(())
}

fn list(path: &Path) -> anyhow::Result<()> {
    let catalog = load(path)?;
    let rows: Vec<[String; 4]> = catalog.operations.iter().map(list_row).collect();
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
    let (name, version, matched) = (width(0), width(1), width(2));
    let mut out = std::io::stdout().lock();
    for [n, v, m, p] in &rows {
        writeln!(out, "{n:<name$}  {v:<version$}  {m:<matched$}  {p}")?;
    }
    Ok(())
}

/// Name, version, what it is matched by, and its parameters (optional ones marked `?`).
fn list_row(op: &Operation) -> [String; 4] {
    let params: Vec<String> = op
        .params
        .iter()
        .map(|p| {
            let optional = if p.required { "" } else { "?" };
            format!("{}{optional}", p.name)
        })
        .collect();
    [
        op.name.clone(),
        format!("v{}", op.version),
        docs::matched_by(op),
        format!("({})", params.join(", ")),
    ]
}

fn docs(path: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let catalog = load(path)?;
    let Some(dir) = out else {
        std::io::stdout().write_all(docs::markdown(&catalog).as_bytes())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(&dir.join("operations.md"), &docs::markdown(&catalog))?;
    for op in &catalog.operations {
        let schema = serde_json::to_string_pretty(&docs::json_schema(op))? + "\n";
        write_file(&dir.join(format!("{}.schema.json", op.name)), &schema)?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(std::io::stdout(), "wrote {}", path.display())?;
    Ok(())
}

/// `waly ops list | head` is not an error.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
}
