//! `torchless fetch`: download a known model into the cache, or list the known models.

use crate::options::CliError;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model name (see the list printed without one).
    pub name: Option<String>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let Some(name) = a.name else {
        println!("cache: {}", torchless_hub::cache_dir().display());
        for m in torchless_hub::KNOWN {
            let state = if m.is_cached() {
                "cached"
            } else {
                "not fetched"
            };
            println!(
                "{:<30} {:>6.0} MiB  {:<12} {}",
                m.name,
                m.size as f64 / 1048576.0,
                state,
                m.description
            );
        }
        return Ok(());
    };
    let m = torchless_hub::find(&name)
        .ok_or_else(|| torchless_hub::HubError::NotFound(name.clone()))?;
    let path = torchless_hub::ensure(m)?;
    println!("{}", path.display());
    Ok(())
}
