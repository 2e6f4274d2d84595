//! Pure rules for submodules: reading `.gitmodules` (a small subset of git's config syntax,
//! parsed here rather than by libgit2 so that no `include.path` of a hostile file is ever
//! followed), refusing paths that leave the repository, and resolving relative URLs against
//! the superproject's as `git submodule` does.

use std::path::{Component, Path};

/// One `[submodule "NAME"]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    pub name: String,
    pub path: Option<String>,
    pub url: Option<String>,
}

/// Reads the `submodule.*.path` and `submodule.*.url` entries of a `.gitmodules` file; other
/// sections and keys are ignored. A later value of a key replaces an earlier one (as in git).
pub fn parse_gitmodules(text: &str) -> Result<Vec<ModuleEntry>, String> {
    let mut entries: Vec<ModuleEntry> = Vec::new();
    // The index in `entries` of the section being read (`None`: another section).
    let mut current: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let header = rest
                .split_once(']')
                .map(|(h, _)| h.trim())
                .ok_or_else(|| format!(".gitmodules line {}: unclosed section header", n + 1))?;
            current = None;
            let Some((section, sub)) = header.split_once(char::is_whitespace) else {
                continue;
            };
            if !section.eq_ignore_ascii_case("submodule") {
                continue;
            }
            let name = unquote(sub.trim())
                .ok_or_else(|| format!(".gitmodules line {}: bad submodule name", n + 1))?;
            current = Some(match entries.iter().position(|e| e.name == name) {
                Some(i) => i,
                None => {
                    entries.push(ModuleEntry {
                        name,
                        path: None,
                        url: None,
                    });
                    entries.len() - 1
                }
            });
            continue;
        }
        let Some(entry) = current.and_then(|i| entries.get_mut(i)) else {
            continue;
        };
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, ""),
        };
        let value =
            unquote_value(value).ok_or_else(|| format!(".gitmodules line {}: bad value", n + 1))?;
        if key.eq_ignore_ascii_case("path") {
            entry.path = Some(value);
        } else if key.eq_ignore_ascii_case("url") {
            entry.url = Some(value);
        }
    }
    Ok(entries)
}

/// `"name"` with `\"` and `\\` escapes.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A config value: quoted parts, `\` escapes, a `#` or `;` comment outside quotes.
fn unquote_value(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'b' => {
                    out.pop();
                }
                c @ ('"' | '\\') => out.push(c),
                _ => return None,
            },
            '#' | ';' if !quoted => break,
            c => out.push(c),
        }
    }
    if quoted {
        return None;
    }
    Some(out.trim_end().to_string())
}

/// A submodule path must stay inside the repository: relative, only plain components, none
/// of them `.git`, no control characters.
pub fn check_submodule_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("its path {path:?} {why}; fix .gitmodules"));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("contains control characters or a backslash");
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) if c.eq_ignore_ascii_case(".git") => {
                return bad("has a .git component")
            }
            Component::Normal(_) => {}
            Component::CurDir => return bad("has a '.' component"),
            Component::ParentDir => return bad("leaves the repository (..)"),
            Component::RootDir | Component::Prefix(_) => return bad("is absolute"),
        }
    }
    Ok(())
}

/// Is `url` relative to the superproject's (`./x`, `../x`)?
pub fn is_relative_url(url: &str) -> bool {
    url.starts_with("./") || url.starts_with("../")
}

/// Resolves a relative submodule URL against the superproject's URL as git does: each `../`
/// drops one path component of the base (a trailing `/` and `.git` stay as they are), `./`
/// none; the rest is appended with a `/`. Refused when it would climb above the host.
pub fn resolve_relative_url(base: &str, relative: &str) -> Result<String, String> {
    let mut base = base.trim_end_matches('/').to_string();
    let mut rest = relative;
    // Where the path starts: after `scheme://host`, or after `host:` in scp-like URLs.
    let floor = match base.find("://") {
        Some(i) => {
            let after = i + 3;
            if base[..i].eq_ignore_ascii_case("file") {
                after
            } else {
                base[after..]
                    .find('/')
                    .map(|p| after + p)
                    .ok_or_else(|| format!("cannot resolve {relative:?}: {base:?} has no path"))?
            }
        }
        None => base
            .find(':')
            .map(|i| i + 1)
            .ok_or_else(|| format!("cannot resolve {relative:?} against {base:?}"))?,
    };
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            let cut = base[floor..]
                .rfind(['/', ':'])
                .map(|i| floor + i)
                .filter(|&i| i >= floor)
                .unwrap_or(floor);
            if base.len() <= floor {
                return Err(format!(
                    "{relative:?} climbs above the repository's host in {base:?}"
                ));
            }
            base.truncate(cut);
        } else {
            break;
        }
    }
    if rest.is_empty() {
        return Err(format!("{relative:?} names no repository"));
    }
    let sep = if base.ends_with(':') || base.ends_with('/') {
        ""
    } else {
        "/"
    };
    Ok(format!("{base}{sep}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_and_urls_of_each_section() {
        let text = "# comment\n[core]\n\turl = nope\n[submodule \"lib\"]\n\tpath = vendor/lib\n\
                    \turl = ../lib.git ; a comment\n[Submodule \"odd \\\"name\\\"\"]\n\
                    \tPath = \"with space\"\n\turl=https://h/x.git\n";
        let m = parse_gitmodules(text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "lib");
        assert_eq!(m[0].path.as_deref(), Some("vendor/lib"));
        assert_eq!(m[0].url.as_deref(), Some("../lib.git"));
        assert_eq!(m[1].name, "odd \"name\"");
        assert_eq!(m[1].path.as_deref(), Some("with space"));
        assert_eq!(m[1].url.as_deref(), Some("https://h/x.git"));
        assert!(parse_gitmodules("[submodule \"x\"\npath = a").is_err());
        assert!(parse_gitmodules("[submodule \"x\"]\npath = \"a").is_err());
    }

    #[test]
    fn paths_that_leave_the_repository_are_refused() {
        for ok in ["lib", "vendor/lib", "a.git/b", "x/.gitx"] {
            assert!(check_submodule_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../../etc",
            "a/../../b",
            "/etc",
            ".git",
            "a/.GIT/hooks",
            "./a",
            "a\nb",
            "a\\b",
        ] {
            assert!(check_submodule_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_urls_resolve_like_git() {
        let r = |b: &str, u: &str| resolve_relative_url(b, u);
        assert_eq!(
            r("https://h/team/app.git", "../lib.git").unwrap(),
            "https://h/team/lib.git"
        );
        assert_eq!(
            r("https://h/team/app.git/", "./lib").unwrap(),
            "https://h/team/app.git/lib"
        );
        assert_eq!(
            r("https://h/team/app.git", "../../other/lib.git").unwrap(),
            "https://h/other/lib.git"
        );
        assert_eq!(
            r("git@h:team/app.git", "../lib.git").unwrap(),
            "git@h:team/lib.git"
        );
        assert_eq!(r("git@h:app.git", "../lib.git").unwrap(), "git@h:lib.git");
        assert_eq!(
            r("file:///srv/git/app", "../lib").unwrap(),
            "file:///srv/git/lib"
        );
        assert!(r("https://h/app.git", "../../x").is_err());
        assert!(r("https://h/app.git", "../").is_err());
        assert!(is_relative_url("../x") && is_relative_url("./x"));
        assert!(!is_relative_url("https://h/x") && !is_relative_url(".x"));
    }
}
