//! `a4co`: the SDK's command-line tool.
//!
//! ```text
//! a4co catalog generate [--dir docs/catalog] [--allow-breaking]
//! a4co catalog check    [--dir docs/catalog]
//! a4co catalog show <type> [<version>]
//! ```
//!
//! `check` exits 1 when the folder differs from the code, 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;

use a4co_events::catalog;
use a4co_events::schema::{self, FindingKind, WriteError};

const USAGE: &str = "\
usage:
  a4co catalog generate [--dir DIR] [--allow-breaking]
      write the catalog (default DIR: docs/catalog); refuses to change a published
      version incompatibly unless --allow-breaking
  a4co catalog check [--dir DIR]
      fail (exit 1) when DIR differs from the code, saying whether the difference
      breaks consumers or only needs `generate`
  a4co catalog show TYPE [VERSION]
      print the published schema of a message (newest version by default)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("a4co: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["catalog", "generate", rest @ ..] => {
            let (dir, allow_breaking) = options(rest, true)?;
            match schema::write(&dir, allow_breaking) {
                Ok(report) => {
                    let count = |kind| report.findings.iter().filter(|f| f.kind == kind).count();
                    println!(
                        "wrote {} files to {}: {} new, {} changed, {} removed",
                        report.files,
                        dir.display(),
                        count(FindingKind::Missing),
                        count(FindingKind::OutOfDate) + count(FindingKind::Breaking),
                        count(FindingKind::Stray),
                    );
                    for finding in report
                        .findings
                        .iter()
                        .filter(|f| f.kind == FindingKind::Breaking)
                    {
                        println!("{finding}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(WriteError::Breaking(report)) => {
                    eprintln!(
                        "{report}\nnothing written; pass --allow-breaking to overwrite anyway"
                    );
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.to_string()),
            }
        }
        ["catalog", "check", rest @ ..] => {
            let (dir, _) = options(rest, false)?;
            let report =
                schema::check(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            if report.is_clean() {
                println!("{report}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} differs from the code:\n{report}", dir.display());
                Ok(ExitCode::FAILURE)
            }
        }
        ["catalog", "show", type_name, rest @ ..] => {
            let version = match rest {
                [] => catalog::versions(type_name).max(),
                [v] => Some(
                    v.trim_start_matches('v')
                        .parse()
                        .map_err(|_| format!("not a version: {v}"))?,
                ),
                _ => return Err("too many arguments".into()),
            };
            let info = version
                .and_then(|v| catalog::find(type_name, v))
                .ok_or_else(|| {
                    format!(
                        "no message {type_name} {}",
                        version.map(|v| format!("v{v}")).unwrap_or_default()
                    )
                })?;
            let text = serde_json::to_string_pretty(&schema::message_schema(info))
                .map_err(|e| e.to_string())?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("unknown command: {}", words.join(" "))),
    }
}

fn options(rest: &[&str], allow_flag: bool) -> Result<(PathBuf, bool), String> {
    let mut dir = PathBuf::from("docs/catalog");
    let mut allow_breaking = false;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--dir" => dir = PathBuf::from(it.next().ok_or("--dir needs a folder")?),
            "--allow-breaking" if allow_flag => allow_breaking = true,
            other => return Err(format!("unknown option: {other}")),
        }
    }
    Ok((dir, allow_breaking))
}
