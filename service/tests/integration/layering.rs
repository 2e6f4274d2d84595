//! The layering rule of ARCHITECTURE.md, checked on the source: no module imports one of a
//! higher layer, no crate of the workspace has an import circle, and only the HTTP layer
//! knows axum and hyper.
//!
//! A module's imports are the `crate::…` and `super::…` paths in its code (comments and its
//! `#[cfg(test)] mod tests` left out), resolved to the longest module path that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The service's layers, top (app) first. A module may use modules of its own layer or lower.
const SERVICE_LAYERS: &[(&str, &[&str])] = &[
    ("app", &["crate", "http", "router"]),
    (
        "edges (HTTP in, device messages in)",
        &[
            "api",
            "web",
            "auth",
            "mqtt",
            "mqtt::link",
            "mqtt::ingest",
            "mqtt::presence",
        ],
    ),
    ("domain", &["domain"]),
    (
        "replicas (lease, engine routing, relays received)",
        &["cluster", "cluster::leader"],
    ),
    ("rollout engine", &["rollout"]),
    ("transport out", &["mqtt::publish", "webhooks"]),
    ("shared state", &["service"]),
    (
        "leaves",
        &[
            "rollout::core",
            "rollout::phasing",
            "rollout::window",
            "rollout::inbox",
            "mqtt::resync",
            "webhooks::config",
            "webhooks::rules",
            "cluster::wire",
            "cluster::lease",
            "cluster::outbox",
            "store",
            "store::pg",
            "ids",
            "config",
            "limits",
            "http_stats",
            "error",
            "sessions",
            "live",
            "metrics",
            "views",
            "init",
        ],
    ),
];

/// Modules allowed to name axum or hyper.
const HTTP_LAYER: &[&str] = &["api", "web", "auth", "http", "router"];

/// Module path of each `.rs` file under `src` → its code without comments and unit tests.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().map(String::as_str) == Some("mod") {
                parts.pop();
            }
            let name = match parts.join("::").as_str() {
                "lib" | "main" => "crate".to_owned(),
                other => other.to_owned(),
            };
            out.insert(name, code_of(&std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

/// The code of a file without line comments and without its `#[cfg(test)] mod tests`.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let without_comment = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        code.push_str(without_comment);
        code.push('\n');
    }
    code
}

/// Identifier paths following `prefix` in `code` (`crate::a::b::{c, d}` gives `a::b::c` and
/// `a::b::d`).
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path = path.trim_end_matches(':').to_owned();
        let after = &rest[path.len()..].trim_start_matches(':');
        if let Some(group) = after.strip_prefix('{') {
            let inner: String = group.chars().take_while(|c| *c != '}').collect();
            for item in inner.split(',') {
                let item = item.split(" as ").next().unwrap_or("").trim();
                if item.is_empty() || item == "self" {
                    out.push(path.clone());
                } else {
                    out.push(format!("{path}::{item}"));
                }
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn resolve(path: &str, mods: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|c| mods.contains_key(c))
}

/// Module → the modules it imports (itself, its ancestors and its descendants left out: a
/// parent declares its children).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut g = BTreeMap::new();
    for (m, code) in &mods {
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            if let Some(t) = resolve(&p, &mods) {
                deps.insert(t);
            }
        }
        let parent = match m.rsplit_once("::") {
            Some((p, _)) => p.to_owned(),
            None => String::new(),
        };
        for p in paths_after(code, "super::") {
            let full = if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            };
            if let Some(t) = resolve(&full, &mods) {
                deps.insert(t);
            }
        }
        deps.retain(|t| {
            t != m
                && t != "crate"
                && !m.starts_with(&format!("{t}::"))
                && !t.starts_with(&format!("{m}::"))
        });
        g.insert(m.clone(), deps);
    }
    g
}

/// The import circles (strongly connected components of more than one module).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_owned()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, order);
        }
        order.push(v.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in g.keys() {
        visit(v, g, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in g {
        for w in ws {
            rev.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        let mut comp = Vec::new();
        visit(v, &rev, &mut assigned, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn layer_of(m: &str) -> Option<usize> {
    // The most specific entry wins (`mqtt::publish` over `mqtt`).
    SERVICE_LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ms))| ms.iter().map(move |x| (i, *x)))
        .filter(|(_, x)| m == *x || m.starts_with(&format!("{x}::")))
        .max_by_key(|(_, x)| x.len())
        .map(|(i, _)| i)
}

#[test]
fn no_crate_of_the_workspace_has_an_import_circle() {
    let root = workspace();
    let mut found = Vec::new();
    for krate in [
        "protocol",
        "certs",
        "broker",
        "client",
        "sim-device",
        "service",
        "cli",
        "device-manager",
        "examples/fleet-sim",
    ] {
        let src = root.join(krate).join("src");
        if !src.is_dir() {
            continue;
        }
        for c in circles(&graph(&src)) {
            found.push(format!("{krate}: {}", c.join(" ↔ ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn every_service_module_uses_only_its_own_layer_or_lower_ones() {
    let g = graph(&workspace().join("service/src"));
    let mut wrong = Vec::new();
    for (m, deps) in &g {
        let Some(lm) = layer_of(m) else {
            wrong.push(format!(
                "{m} is in no layer: add it to SERVICE_LAYERS here and to ARCHITECTURE.md"
            ));
            continue;
        };
        for d in deps {
            if let Some(ld) = layer_of(d) {
                if ld < lm {
                    wrong.push(format!(
                        "{m} ({}) uses {d} ({}), a higher layer",
                        SERVICE_LAYERS[lm].0, SERVICE_LAYERS[ld].0
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn only_the_http_layer_knows_axum_and_hyper() {
    let mods = modules(&workspace().join("service/src"));
    let offenders: Vec<&String> = mods
        .iter()
        .filter(|(m, code)| {
            (code.contains("axum") || code.contains("hyper"))
                && !HTTP_LAYER
                    .iter()
                    .any(|h| *m == h || m.starts_with(&format!("{h}::")))
        })
        .map(|(m, _)| m)
        .collect();
    assert!(
        offenders.is_empty(),
        "outside the HTTP layer: {offenders:?}"
    );
}

#[test]
fn the_checker_finds_a_planted_circle_and_a_layer_breach() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("domain")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod store; pub mod domain;").unwrap();
    std::fs::write(src.join("store.rs"), "use crate::domain::Caller;\n").unwrap();
    std::fs::write(
        src.join("domain/mod.rs"),
        "// crate::nothing in a comment\nuse crate::store::{Store, Other as O};\n",
    )
    .unwrap();
    let g = graph(src);
    assert_eq!(
        circles(&g),
        vec![vec!["domain".to_owned(), "store".to_owned()]]
    );
    assert!(layer_of("store").unwrap() > layer_of("domain").unwrap());
    assert_eq!(layer_of("mqtt::publish"), Some(5));
    assert_eq!(layer_of("mqtt::ingest"), Some(1));
}
