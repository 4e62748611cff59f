//! The core's imports go one way: no module imports a module that imports it,
//! directly or through others (the docs say so; this keeps it true).
//!
//! Every `crate::...` path in a source file is an import of the module file
//! that path names (the longest prefix that is a file of the crate); a
//! folder's `mod.rs` that re-exports its children imports them. `pub mod`
//! declarations are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("the core's sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `routing/agents.rs` -> `routing::agents`, `learning/mod.rs` -> `learning`.
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).expect("under the root");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The module paths a source names after `crate::`, and the children a
/// `mod.rs` re-exports (`pub use child::...`).
fn imports(text: &str, module: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    // `use crate::{a::b, c}` groups: flatten the braces of a `use` into paths
    let mut paths: Vec<String> = Vec::new();
    for stmt in code.split(';') {
        let stmt = stmt.trim();
        if let Some(rest) = stmt
            .strip_prefix("pub use ")
            .or_else(|| stmt.strip_prefix("use "))
            .or_else(|| stmt.strip_prefix("pub(crate) use "))
        {
            expand(rest.trim(), "", &mut paths);
        }
    }
    // inline paths such as `crate::routing::ring::key_hash(...)`
    for (i, _) in code.match_indices("crate::") {
        let tail: String = code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(tail);
    }
    for path in paths {
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let (segs, base): (Vec<&str>, Vec<&str>) = match segs.first() {
            Some(&"crate") => (segs[1..].to_vec(), vec![]),
            // a mod.rs re-exporting a child by a relative path
            Some(first) if module_prefix_child(module, first, modules) => {
                (segs.clone(), module.split("::").collect())
            }
            _ => continue,
        };
        let full: Vec<&str> = base.iter().chain(segs.iter()).copied().collect();
        for n in (1..=full.len()).rev() {
            let candidate = full[..n].join("::");
            if modules.contains(&candidate) {
                if candidate != module {
                    out.insert(candidate);
                }
                break;
            }
        }
    }
    out
}

fn module_prefix_child(module: &str, first: &str, modules: &BTreeSet<String>) -> bool {
    let child = if module.is_empty() {
        first.to_string()
    } else {
        format!("{module}::{first}")
    };
    modules.contains(&child)
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = &tree[..open];
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &format!("{prefix}{head}"), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &format!("{prefix}{head}"), out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{tree}"));
    }
}

#[test]
fn no_module_of_the_core_imports_one_that_imports_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("native/core/src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&root, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let module = module_of(&root, f);
        let text = fs::read_to_string(f).expect("a source file");
        graph.insert(module.clone(), imports(&text, &module, &modules));
    }
    // the graph is read right: a few edges the code is known to have
    assert!(graph["routing::router"].contains("routing::agents"));
    assert!(graph["learning"].contains("learning::learner"));
    assert!(graph["shared"].contains("hot"));

    // depth-first search for a back edge
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == m).unwrap_or(0);
                let mut cycle = stack[at..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(m, &graph, &mut state, &mut stack) {
            panic!("an import cycle in the core: {}", cycle.join(" -> "));
        }
    }
}
