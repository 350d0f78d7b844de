//! `cargo xtask package`: the Debian package `target/package/swarmlb_<version>_<arch>.deb`.
//!
//! Written with `dpkg-deb --build` from a staging tree rather than with
//! cargo-deb: dpkg-deb is on every Debian host (dpkg is essential), so
//! packaging needs no tool compiled from crates.io and no network, and
//! every file the package holds is named in one list below ([`layout`]),
//! next to the maintainer scripts it runs. `Depends:` comes from
//! `dpkg-shlibdeps` (dpkg-dev) on the binary, as debhelper does it.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{root, run};

/// The package's name (and that of its binary and units).
const NAME: &str = "swarmlb";

/// `postinst`: make systemd see the (new) units. Nothing is enabled or
/// started on a first install, because the agent needs
/// /etc/swarmlb/swarmlb.toml written first (docs/quickstart.md); an
/// upgrade restarts a running agent, which is hitless (it adopts the
/// pinned data path).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -n "$2" ]; then
        systemctl try-restart swarmlb.service || true
    fi
fi
"#;

/// `prerm`: on removal, stop the agent and take its data path off the
/// host (the programs would otherwise stay attached with nothing left to
/// remove them); an upgrade keeps both.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now swarmlb.service swarmlb-backend.service || true
    fi
    swarmlb down || echo "swarmlb: run 'swarmlb down --pin-path PIN_PATH' for a pin_path other than the default" >&2
fi
"#;

/// `postrm`: systemd forgets the removed units.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#;

/// `copyright` (Debian policy: every package has one).
const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: swarmlb

Files: *
License: MIT OR Apache-2.0
 On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
";

/// What goes where: (source relative to the workspace root, or to the
/// generated assets for `assets/…`; destination in the package; mode).
fn layout() -> Vec<(String, String, u32)> {
    let doc = "usr/share/doc/swarmlb";
    let mut files = vec![
        ("target/release/swarmlb".into(), "usr/bin/swarmlb".into(), 0o755),
        ("deploy/swarmlb.service".into(), "lib/systemd/system/swarmlb.service".into(), 0o644),
        ("deploy/swarmlb-backend.service".into(), "lib/systemd/system/swarmlb-backend.service".into(), 0o644),
        ("assets/completions/swarmlb.bash".into(), "usr/share/bash-completion/completions/swarmlb".into(), 0o644),
        ("assets/completions/_swarmlb".into(), "usr/share/zsh/vendor-completions/_swarmlb".into(), 0o644),
        ("assets/completions/swarmlb.fish".into(), "usr/share/fish/vendor_completions.d/swarmlb.fish".into(), 0o644),
        ("README.md".into(), format!("{doc}/README.md"), 0o644),
    ];
    for doc_file in ["quickstart.md", "config.md", "agent.md", "balancer.md", "isolator.md", "faults.md", "ha.md", "architecture.md"] {
        files.push((format!("docs/{doc_file}"), format!("{doc}/{doc_file}"), 0o644));
    }
    for example in [
        "examples/swarmlb.toml",
        "deploy/stack.yml",
        "deploy/Dockerfile",
        "deploy/proxy-stack.yml",
        "deploy/proxy-nginx.conf",
        "deploy/keepalived.conf",
        "deploy/prometheus-alerts.yml",
        "deploy/grafana-dashboard.json",
        "deploy/bird.conf",
    ] {
        let name = Path::new(example).file_name().unwrap().to_string_lossy().into_owned();
        files.push((example.into(), format!("{doc}/examples/{name}"), 0o644));
    }
    files
}

/// Builds the package; returns its path.
pub fn build() -> Result<PathBuf> {
    crate::build()?;
    let root = root();
    let out = root.join("target/package");
    let assets = out.join("assets");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    // The man pages and completions, from the CLI's own clap definition.
    run(Command::new(root.join("target/release/swarmlb")).env("SWARMLB_GENERATE_ASSETS", &assets))?;

    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let version = env!("CARGO_PKG_VERSION");
    let stage = out.join(format!("{NAME}_{version}_{arch}"));
    for (src, dest, mode) in layout() {
        let src = match src.strip_prefix("assets/") {
            Some(generated) => assets.join(generated),
            None => root.join(&src),
        };
        install(&src, &stage.join(&dest), mode)?;
    }
    run(Command::new("strip").arg("--strip-unneeded").arg(stage.join("usr/bin/swarmlb")))?;
    // One gzipped page per command (`man swarmlb`, `man swarmlb-run`, …).
    let man_dir = stage.join("usr/share/man/man1");
    for page in fs::read_dir(assets.join("man"))? {
        let page = page?.path();
        install(&page, &man_dir.join(page.file_name().unwrap()), 0o644)?;
    }
    run(Command::new("gzip").arg("-9n").args(fs::read_dir(&man_dir)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?))?;
    let doc = stage.join("usr/share/doc/swarmlb");
    fs::write(doc.join("copyright"), COPYRIGHT)?;

    let depends = shlib_depends(&stage)?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        fs::write(debian.join(name), script)?;
        fs::set_permissions(debian.join(name), fs::Permissions::from_mode(0o755))?;
    }
    fs::write(debian.join("md5sums"), md5sums(&stage)?)?;
    let installed_kib = output(Command::new("du").args(["-sk", "--exclude=DEBIAN"]).arg(&stage))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_owned();
    fs::write(
        debian.join("control"),
        format!(
            "Package: {NAME}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: swarmlb developers <swarmlb@example.invalid>\n\
             Installed-Size: {installed_kib}\nDepends: {depends}\nRecommends: iproute2\nSuggests: keepalived, docker.io\n\
             Description: XDP load balancer and port isolator for Docker Swarm\n \
             swarmlb gives a Docker Swarm on bare metal what a cloud load balancer gives\n \
             droplets: one address whose TCP/UDP connections (TLS passed through) are spread\n \
             over the nodes that carry a label, with health checks. Its XDP isolator drops\n \
             traffic to ports of internal services on DMZ-facing interfaces.\n",
        ),
    )?;
    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb))?;
    println!("{}", deb.display());
    Ok(deb)
}

/// Copies `src` to `dest` (parents created) with `mode`.
fn install(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dest.parent().unwrap())?;
    fs::copy(src, dest).with_context(|| format!("copying {} into the package", src.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The libraries the binary links, as package dependencies
/// (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`).
fn shlib_depends(stage: &Path) -> Result<String> {
    // dpkg-shlibdeps reads debian/control of the source package it thinks
    // it is in; an empty one in a scratch directory is enough.
    let scratch = stage.with_extension("shlibdeps");
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(scratch.join("debian/control"), "")?;
    let line = output(Command::new("dpkg-shlibdeps").arg("-O").arg(stage.join("usr/bin/swarmlb")).current_dir(&scratch))?;
    fs::remove_dir_all(&scratch)?;
    match line.trim().strip_prefix("shlibs:Depends=") {
        Some(deps) if !deps.is_empty() => Ok(deps.to_owned()),
        _ => bail!("dpkg-shlibdeps said {line:?}"),
    }
}

/// `DEBIAN/md5sums`: every file's md5 and path, as dpkg checks them.
fn md5sums(stage: &Path) -> Result<String> {
    let files = output(Command::new("find").arg(".").args(["-type", "f", "!", "-path", "./DEBIAN/*"]).current_dir(stage))?;
    let mut files: Vec<&str> = files.lines().map(|f| f.trim_start_matches("./")).collect();
    files.sort();
    Ok(output(Command::new("md5sum").args(files).current_dir(stage))? + "\n")
}

/// A command's stdout, trimmed; an error with its stderr when it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
