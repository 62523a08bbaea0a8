//! The benchmark-only loader (xtask/bench-probes, binary
//! `sonde-bench-probes`): the floors and part-by-part variants the agent
//! does not carry. `Probes::start` runs it until it says what it attached;
//! dropping the handle detaches everything (SIGTERM).

use std::{
    io::{BufRead as _, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::agent::signal;

/// Builds the loader with the same profile as the sonde binary measured
/// (release for the default fresh build, dev for `--bin`, which is what the
/// harness test passes): the build then reuses the agent library already
/// compiled for that profile.
pub fn build(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "--package", "sonde-bench-probes"];
    if release {
        args.push("--release");
    }
    crate::cmd::cargo(&args)?;
    let profile = if release { "release" } else { "debug" };
    Ok(crate::cmd::workspace_root()
        .join("target")
        .join(profile)
        .join("sonde-bench-probes"))
}

/// A running `sonde-bench-probes <args>` holding its programs attached.
pub struct Probes {
    child: Child,
    /// What it said it attached (its first line).
    pub attached: String,
}

impl Probes {
    pub fn start(bin: &Path, args: &[&str]) -> Result<Probes> {
        let what = format!("sonde-bench-probes {}", args.join(" "));
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let out = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("attached") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            bail!("{what} did not attach: {}", err.trim());
        }
        Ok(Probes {
            child,
            attached: line.trim().to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        signal(self.child.id(), 15);
        let _ = self.child.wait();
    }
}
