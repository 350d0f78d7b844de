//! Container images from the machine's own files (no registry is
//! reachable): a root file system of chosen executables, the shared
//! libraries they link (as `ldd` lists them) and a few files, for
//! [`crate::swarm::SwarmLab::import_rootfs`].

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// A root file system being assembled in a directory (removed on drop).
pub struct Rootfs {
    dir: PathBuf,
}

impl Rootfs {
    /// An empty tree in `dir` (created; whatever was there is removed).
    pub fn new(dir: &Path) -> Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// The tree's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The shared libraries (and the dynamic loader) `exe` needs: only
    /// these, so that a base image for an executable copied in later holds
    /// what that executable runs on.
    pub fn libraries_of(&self, exe: &Path) -> Result<&Self> {
        let out = Command::new("ldd").arg(exe).output().context("running ldd")?;
        if !out.status.success() {
            bail!("ldd {}: {}", exe.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, or the
        // loader alone: `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = line.split("=>").last().and_then(|r| r.split_whitespace().next()).unwrap_or("");
            if path.starts_with('/') {
                self.copy(Path::new(path), path)?;
            }
        }
        Ok(self)
    }

    /// `exe` at the same path in the tree, with its shared libraries.
    pub fn executable(&self, exe: &str) -> Result<&Self> {
        self.copy(Path::new(exe), exe)?;
        self.libraries_of(Path::new(exe))
    }

    /// Copies the host's `src` (following symlinks) to `dest` in the tree.
    pub fn copy(&self, src: &Path, dest: &str) -> Result<&Self> {
        let to = self.at(dest)?;
        fs::copy(src, &to).with_context(|| format!("copying {} into the image", src.display()))?;
        Ok(self)
    }

    /// A file `dest` with `contents`.
    pub fn file(&self, dest: &str, contents: &str) -> Result<&Self> {
        fs::write(self.at(dest)?, contents).with_context(|| format!("writing {dest} into the image"))?;
        Ok(self)
    }

    /// An empty directory `dest` (mode 1777 for scratch space such as /tmp).
    pub fn dir(&self, dest: &str) -> Result<&Self> {
        let to = self.dir.join(dest.trim_start_matches('/'));
        fs::create_dir_all(&to)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o1777))?;
        Ok(self)
    }

    /// The tree's path for `dest`, its parent directories created.
    fn at(&self, dest: &str) -> Result<PathBuf> {
        let to = self.dir.join(dest.trim_start_matches('/'));
        fs::create_dir_all(to.parent().expect("a file path"))?;
        Ok(to)
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
