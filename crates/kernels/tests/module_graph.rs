//! The kernel crate's modules form no import cycle, and no source file of the workspace is
//! longer than one sitting's read.
//!
//! The graph is read from the sources: every `use` line and every inline `crate::` or
//! `super::` path outside comments is an edge from the file's module to the module it names.
//! A module is a file of `src/` at depth one or two (`crate::matmul`, `crate::quant::types`);
//! a deeper file belongs to its depth-two parent (`crate::simd::avx2::float` is part of
//! `crate::simd::avx2`). A path that ends at a `mod.rs` or `lib.rs` on a name that file
//! re-exports with `pub use` is followed to the module the name comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["quant", "types"]`) of a source file below `src/`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments (line comments, doc comments and block comments).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let (mut i, mut in_str) = (0, false);
    while i < b.len() {
        if in_str {
            if b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                in_str = false;
            }
            out.push(b[i] as char);
            i += 1;
        } else if b[i] == b'"' {
            in_str = true;
            out.push('"');
            i += 1;
        } else if src[i..].starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if src[i..].starts_with("/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else {
            out.push(src[i..].chars().next().unwrap());
            i += src[i..].chars().next().unwrap().len_utf8();
        }
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let (prefix, body) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&body[start..]);
    items
        .into_iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| expand(&format!("{prefix}{s}")))
        .collect()
}

/// Every path a file names: its `use` trees (expanded) and inline `crate::`/`super::` paths.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let stmt_start = before.is_none_or(|c| !c.is_alphanumeric() && c != '_');
        rest = &rest[at + 4..];
        if stmt_start {
            if let Some(end) = rest.find(';') {
                paths.extend(expand(&rest[..end]));
            }
        }
    }
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            let prev = code[..at].chars().last();
            if prev.is_none_or(|c| !ident(c)) {
                let end = code[at..]
                    .find(|c: char| !ident(c))
                    .map_or(code.len(), |e| at + e);
                paths.push(code[at..end].trim_end_matches(':').to_string());
            }
            from = at + start.len();
        }
    }
    paths
}

/// Resolves a path named in module `from` to absolute segments (`crate` dropped); `None`
/// for paths outside the crate (`std::…`, other crates, local names).
fn absolute(from: &[String], path: &str) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, mut i) = match segs.first()? {
        &"crate" => (Vec::new(), 1),
        &"super" | &"self" => (from.to_vec(), 0),
        _ => return None,
    };
    while let Some(&s) = segs.get(i) {
        match s {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        i += 1;
    }
    base.extend(segs[i..].iter().map(|s| s.to_string()));
    Some(base)
}

#[test]
fn kernel_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap();
            (
                module_of(rel),
                strip_comments(&std::fs::read_to_string(f).unwrap()),
            )
        })
        .collect();
    let node = |m: &[String]| -> Vec<String> { m[..m.len().min(2)].to_vec() };
    // Names that mod.rs / lib.rs files re-export: (module, name) -> absolute origin.
    let mut reexports: BTreeMap<(Vec<String>, String), Vec<String>> = BTreeMap::new();
    for (m, code) in &modules {
        for line in code.split(';') {
            let line = line.trim();
            if let Some(tree) = line.strip_prefix("pub use ") {
                for p in expand(tree) {
                    let rel = if p.starts_with("crate::") || p.starts_with("super::") {
                        p.clone()
                    } else {
                        format!("self::{p}")
                    };
                    if let Some(abs) = absolute(m, &rel) {
                        if let Some(name) = abs.last() {
                            reexports.insert((m.clone(), name.clone()), abs);
                        }
                    }
                }
            }
        }
    }
    // The deepest module a path reaches, following re-exports.
    let target = |abs: &[String]| -> Option<Vec<String>> {
        let mut abs = abs.to_vec();
        for _ in 0..8 {
            let k = (1..=abs.len())
                .rev()
                .find(|&k| modules.contains_key(&abs[..k]))?;
            match abs.get(k) {
                Some(name) if reexports.contains_key(&(abs[..k].to_vec(), name.clone())) => {
                    let origin = &reexports[&(abs[..k].to_vec(), name.clone())];
                    let mut next = origin.clone();
                    next.extend(abs[k + 1..].iter().cloned());
                    abs = next;
                }
                _ => return Some(node(&abs[..k])),
            }
        }
        None
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, code) in &modules {
        let from = node(m);
        for p in paths_in(code) {
            let Some(abs) = absolute(m, &p) else { continue };
            if abs.is_empty() {
                continue;
            }
            if let Some(to) = target(&abs) {
                // A module may use its own parts and its parent's re-exports of itself.
                if to != from && !to.is_empty() {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    // Sanity: the graph is not empty and knows the edges that must be there.
    let has = |a: &[&str], b: &[&str]| {
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let b: Vec<String> = b.iter().map(|s| s.to_string()).collect();
        edges.get(&a).is_some_and(|e| e.contains(&b))
    };
    assert!(has(&["matmul"], &["dispatch"]), "{edges:#?}");
    assert!(has(&["simd", "avx2"], &["tile"]), "{edges:#?}");
    assert!(
        has(&["quant", "interleave"], &["quant", "types"]),
        "{edges:#?}"
    );
    // Depth-first search for a cycle.
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(n.clone());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        let cycle = visit(n, &edges, &mut state, &mut Vec::new());
        let names: Option<Vec<String>> = cycle.map(|c| {
            c.iter()
                .map(|m| format!("crate::{}", m.join("::")))
                .collect()
        });
        assert!(
            names.is_none(),
            "import cycle: {}",
            names.unwrap().join(" -> ")
        );
    }
}

#[test]
fn no_source_file_is_over_a_thousand_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["crates", "src", "tests", "fuzz/fuzz_targets"] {
        let d = root.join(dir);
        if d.is_dir() {
            rs_files(&d, &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "target"))
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 1000).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "files over 1,000 lines: {long:?}");
}
