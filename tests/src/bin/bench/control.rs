//! Placeholder: being written.

use anyhow::Result;

use crate::{report::Section, Opts};

pub fn run(_opts: &Opts) -> Result<Section> {
    anyhow::bail!("the control section is not written yet")
}
