//! `braid completions SHELL` and the hidden `braid man --out DIR`: shell
//! completions and manual pages generated from the clap definitions
//! themselves, so they cannot drift from the command line. scripts/package
//! ships both in the .deb.

use std::io;
use std::path::PathBuf;

use braid_kernel::Error;
use clap::Args;
use clap_complete::Shell;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write braid.1 and one page per subcommand (braid-status.1,
    /// braid-endpoint-add.1, ...) into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Print the completion script for `a.shell` on stdout.
pub fn completions(mut cmd: clap::Command, a: CompletionsArgs) {
    clap_complete::generate(a.shell, &mut cmd, "braid", &mut io::stdout());
}

/// Write the manual pages of `cmd` and of every visible subcommand.
pub fn man(cmd: clap::Command, a: ManArgs) -> Result<(), Error> {
    std::fs::create_dir_all(&a.out)
        .and_then(|()| clap_mangen::generate_to(cmd, &a.out))
        .map_err(|e| Error::Invalid(format!("writing manual pages to {}: {e}", a.out.display())))
}
