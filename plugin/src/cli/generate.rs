//! `daffe generate` (hidden, for packagers): shell completions and man pages
//! made from the clap definitions themselves, so they never drift from the
//! binary they ship with. `packaging/build-deb.sh` runs it at package build
//! time; nothing generated is kept in the repository.

use clap::{Args, Subcommand};
use clap_complete::Shell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub(crate) what: GenerateCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GenerateCommand {
    /// Completion scripts for bash (`daffe`), zsh (`_daffe`) and fish
    /// (`daffe.fish`) into DIR, named as each shell looks them up.
    Completions {
        /// Directory to write the scripts into.
        dir: PathBuf,
    },
    /// One man page per command (`daffe.1`, `daffe-serve.1`, ...) into DIR.
    Man {
        /// Directory to write the pages into.
        dir: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("writing {what} into {dir}: {source}")]
pub(crate) struct GenerateError {
    what: &'static str,
    dir: PathBuf,
    source: std::io::Error,
}

/// The shells whose completions the package ships.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes completion scripts for `cmd` into `dir`; returns the files.
pub(crate) fn completions(cmd: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let err = |source| GenerateError {
        what: "completions",
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = cmd.get_name().to_owned();
    SHELLS
        .iter()
        .map(|shell| clap_complete::generate_to(*shell, &mut cmd.clone(), &name, dir).map_err(err))
        .collect()
}

/// Writes man pages for `cmd` and its visible subcommands into `dir`.
pub(crate) fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<(), GenerateError> {
    let err = |source| GenerateError {
        what: "man pages",
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    clap_mangen::generate_to(cmd.clone(), dir).map_err(err)
}

/// Runs `daffe generate ...` for the binary's command `cmd`.
pub fn run(args: GenerateArgs, cmd: clap::Command) -> ExitCode {
    let result = match &args.what {
        GenerateCommand::Completions { dir } => completions(&cmd, dir).map(|_| ()),
        GenerateCommand::Man { dir } => man_pages(&cmd, dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(false, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("daffe")
            .version("1.0")
            .about("test")
            .subcommand(
                clap::Command::new("volume").about("volumes").subcommand(
                    clap::Command::new("ls")
                        .about("list")
                        .arg(clap::arg!(--json)),
                ),
            )
            .subcommand(clap::Command::new("generate").hide(true))
    }

    #[test]
    fn completions_for_three_shells_name_the_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        let files = completions(&sample(), dir.path()).unwrap();
        let mut names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["_daffe", "daffe.bash", "daffe.fish"]);
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(
                text.contains("volume") && text.contains("json"),
                "{}",
                f.display()
            );
        }
    }

    #[test]
    fn a_man_page_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(&sample(), dir.path()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["daffe-volume-ls.1", "daffe-volume.1", "daffe.1"]);
        let ls = std::fs::read_to_string(dir.path().join("daffe-volume-ls.1")).unwrap();
        assert!(
            ls.contains(".TH daffe-volume-ls 1") && ls.contains("json"),
            "{ls}"
        );
    }
}
