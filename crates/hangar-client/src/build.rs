//! Dockerfile builds: the build context as a tarball (honouring `.dockerignore`) and
//! `POST /v1/apps/{app}/builds`, whose answer is a stream of [`BuildEvent`]s.
//!
//! The context is written to a temporary file first (so its size is known and the upload
//! can report progress), then streamed from disk; it is never held in memory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError, NdjsonStream};

/// One event of a build's output stream (`docs/api.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    /// The build started on the server.
    Started {
        /// The build id.
        id: String,
        /// The name the image will get, `<app>:deployment-<id>`.
        image: String,
    },
    /// One line of buildah's output.
    Log {
        /// The line.
        line: String,
    },
    /// The image is in the server's store.
    Done {
        /// `<app>:deployment-<id>`.
        image: String,
        /// Its manifest digest.
        digest: String,
    },
    /// The build failed.
    Error {
        /// What failed.
        message: String,
        /// The failing Dockerfile step, when known.
        #[serde(default)]
        step: Option<String>,
        /// The last lines of that step's output.
        #[serde(default)]
        output: Vec<String>,
    },
    /// An event type this client does not know (a newer server); ignored.
    #[serde(other)]
    Unknown,
}

/// Options of a build request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildParams {
    /// The Dockerfile relative to the context root [default: `Dockerfile`].
    pub dockerfile: Option<String>,
    /// The multi-stage target.
    pub target: Option<String>,
    /// Build arguments, `KEY`, `VALUE`.
    pub args: Vec<(String, String)>,
    /// How long the build may run (`30m`).
    pub timeout: Option<String>,
    /// The build's memory limit in MiB.
    pub memory_mb: Option<u64>,
}

impl Client {
    /// `POST /v1/apps/{app}/builds` with the context tarball at `context_tar` as the
    /// body. `sent` counts the bytes uploaded so far, for a progress display.
    pub async fn start_build(
        &self,
        app: &str,
        context_tar: &Path,
        params: &BuildParams,
        sent: Option<Arc<AtomicU64>>,
    ) -> Result<NdjsonStream<BuildEvent>, ClientError> {
        let mut url = self.url(&["v1", "apps", app, "builds"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(d) = &params.dockerfile {
                q.append_pair("dockerfile", d);
            }
            if let Some(t) = &params.target {
                q.append_pair("target", t);
            }
            for (k, v) in &params.args {
                q.append_pair("arg", &format!("{k}={v}"));
            }
            if let Some(t) = &params.timeout {
                q.append_pair("timeout", t);
            }
            if let Some(m) = params.memory_mb {
                q.append_pair("memory_mb", &m.to_string());
            }
        }
        let url = crate::clean(url);
        let io_err = |source| ClientError::Io {
            path: context_tar.to_owned(),
            source,
        };
        let file = tokio::fs::File::open(context_tar).await.map_err(io_err)?;
        let len = file.metadata().await.map_err(io_err)?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect_ok(
            move |chunk| {
                if let Some(sent) = &sent {
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            },
        );
        let request = self
            .request(Method::POST, url)
            .header(CONTENT_TYPE, "application/x-tar")
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        let response = self.send(request).await?;
        Ok(NdjsonStream::new(response, self.base_url().to_owned()))
    }
}

/// `.dockerignore` rules: Docker's semantics (patterns relative to the context root,
/// `*`, `?`, `[...]`, `**` for any number of directories, `!` exceptions, the last
/// matching rule wins, and a rule that matches a directory matches everything in it).
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Vec<Token>,
    exception: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any characters other than `/`.
    Star,
    /// `**`: anything, `/` included.
    AnyPath,
    /// `**/`: zero or more whole directories.
    AnyDirs,
    /// `[...]`: ranges, negated.
    Class(Vec<(char, char)>, bool),
}

impl DockerIgnore {
    /// Parses the contents of a `.dockerignore` file.
    pub fn parse(text: &str) -> DockerIgnore {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let (exception, pattern) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let cleaned = clean_pattern(pattern);
                (!cleaned.is_empty()).then(|| Rule {
                    pattern: tokenize(&cleaned),
                    exception,
                })
            })
            .collect();
        DockerIgnore { rules }
    }

    /// Whether any rule is an exception (`!pattern`): then excluded directories must
    /// still be walked, since an exception may bring back something inside them.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let path = path.trim_start_matches("./").trim_matches('/');
        let parents: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for rule in &self.rules {
            let mut hit = matches(&rule.pattern, path);
            // A rule that matches a parent directory matches the path too.
            if !hit && parents.len() > 1 {
                hit = (1..parents.len()).any(|n| matches(&rule.pattern, &parents[..n].join("/")));
            }
            if hit {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

/// Docker cleans each pattern like a path (`filepath.Clean`) and drops a leading `/`.
fn clean_pattern(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn tokenize(p: &str) -> Vec<Token> {
    let chars: Vec<char> = p.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
                if chars.get(i) == Some(&'/') {
                    i += 1;
                    out.push(Token::AnyDirs);
                } else {
                    out.push(Token::AnyPath);
                }
                continue;
            }
            '*' => out.push(Token::Star),
            '?' => out.push(Token::One),
            '\\' if i + 1 < chars.len() => {
                i += 1;
                out.push(Token::Literal(chars[i]));
            }
            '[' => {
                if let Some((class, next)) = parse_class(&chars, i + 1) {
                    out.push(class);
                    i = next;
                    continue;
                }
                out.push(Token::Literal('['));
            }
            c => out.push(Token::Literal(c)),
        }
        i += 1;
    }
    out
}

/// Parses a `[...]` class starting after the `[`; returns the token and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = matches!(chars.get(i), Some('^' | '!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class(ranges, negated), i + 1));
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *chars.get(i)?
        } else {
            c
        };
        i += 1;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            let hi = *chars.get(i + 1)?;
            ranges.push((lo, hi));
            i += 2;
        } else {
            ranges.push((lo, lo));
        }
    }
}

fn matches(pattern: &[Token], path: &str) -> bool {
    let s: Vec<char> = path.chars().collect();
    match_at(pattern, &s)
}

fn match_at(p: &[Token], s: &[char]) -> bool {
    let Some((first, rest)) = p.split_first() else {
        return s.is_empty();
    };
    match first {
        Token::Literal(c) => s.first() == Some(c) && match_at(rest, &s[1..]),
        Token::One => s.first().is_some_and(|c| *c != '/') && match_at(rest, &s[1..]),
        Token::Class(ranges, negated) => {
            s.first().is_some_and(|c| {
                *c != '/' && ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated
            }) && match_at(rest, &s[1..])
        }
        Token::Star => {
            for i in 0..=s.len() {
                if match_at(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&'/') {
                    break;
                }
            }
            false
        }
        Token::AnyPath => (0..=s.len()).any(|i| match_at(rest, &s[i..])),
        Token::AnyDirs => {
            // Zero directories, or any prefix that ends at a `/`.
            match_at(rest, s) || (0..s.len()).any(|i| s[i] == '/' && match_at(rest, &s[i + 1..]))
        }
    }
}

/// What went into a context tarball.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextStats {
    /// Regular files written.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Paths left out by `.dockerignore` (files and whole directories).
    pub excluded: u64,
}

/// The ignore file of a build: `<dockerfile>.dockerignore` next to the Dockerfile when it
/// exists (as Docker does), else `.dockerignore` at the context root.
pub fn ignore_file_for(context: &Path, dockerfile: &str) -> PathBuf {
    let specific = context.join(format!("{dockerfile}.dockerignore"));
    if specific.is_file() {
        specific
    } else {
        context.join(".dockerignore")
    }
}

/// Writes the build context `dir` as a tar into `out`, leaving out what `ignore` excludes
/// but always including `always` (the Dockerfile and the ignore file, as Docker does).
/// Symlinks are stored as links; sockets and other special files are skipped.
pub fn write_context_tar(
    dir: &Path,
    ignore: &DockerIgnore,
    always: &[&str],
    out: impl Write,
) -> io::Result<ContextStats> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut stats = ContextStats::default();
    let always: Vec<String> = always.iter().map(|a| clean_pattern(a)).collect();
    walk(dir, "", ignore, &always, &mut builder, &mut stats)?;
    builder.into_inner()?.flush()?;
    Ok(stats)
}

fn walk<W: Write>(
    root: &Path,
    rel: &str,
    ignore: &DockerIgnore,
    always: &[String],
    builder: &mut tar::Builder<W>,
    stats: &mut ContextStats,
) -> io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut entries: Vec<(String, fs::FileType)> = fs::read_dir(&dir)?
        .map(|e| {
            let e = e?;
            Ok((e.file_name().to_string_lossy().into_owned(), e.file_type()?))
        })
        .collect::<io::Result<_>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, kind) in entries {
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let forced = always.contains(&path);
        let needed_below = always.iter().any(|a| a.starts_with(&format!("{path}/")));
        let excluded = !forced && ignore.excludes(&path);
        if kind.is_dir() {
            if excluded && !ignore.has_exceptions() && !needed_below {
                stats.excluded += 1;
                continue;
            }
            if !excluded {
                builder.append_path_with_name(root.join(&path), &path)?;
            }
            walk(root, &path, ignore, always, builder, stats)?;
        } else if excluded {
            stats.excluded += 1;
        } else if kind.is_file() || kind.is_symlink() {
            let full = root.join(&path);
            if kind.is_file() {
                stats.files += 1;
                stats.bytes += fs::metadata(&full)?.len();
            }
            builder.append_path_with_name(full, &path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: .dockerignore text, path, whether it is excluded.
    fn check(ignore: &str, cases: &[(&str, bool)]) {
        let di = DockerIgnore::parse(ignore);
        for (path, want) in cases {
            assert_eq!(
                di.excludes(path),
                *want,
                "{path:?} with .dockerignore {ignore:?}"
            );
        }
    }

    #[test]
    fn dockerignore_matches_like_docker() {
        check(
            "target\n*.log\n# comment\n\n  node_modules  \n",
            &[
                ("target", true),
                ("target/debug/app", true),
                ("a.log", true),
                ("sub/a.log", false),
                ("node_modules/x/y.js", true),
                ("src/main.rs", false),
                ("# comment", false),
            ],
        );
        check(
            "**/*.log\n/build/\n./tmp\ndocs/**\n",
            &[
                ("a.log", true),
                ("x/y/z.log", true),
                ("build", true),
                ("build/out.o", true),
                ("src/build", false),
                ("tmp/x", true),
                ("docs/a/b.md", true),
                ("docs", false),
            ],
        );
        check(
            "*\n!src\n!Dockerfile\nsrc/secret.txt\n",
            &[
                ("README.md", true),
                ("Dockerfile", false),
                ("src/main.rs", false),
                ("src/secret.txt", true),
            ],
        );
        check(
            "file?.txt\n[ab].c\n[!x]y\n\\*lit\n",
            &[
                ("file1.txt", true),
                ("file12.txt", false),
                ("file/.txt", false),
                ("a.c", true),
                ("c.c", false),
                ("zy", true),
                ("xy", false),
                ("*lit", true),
                ("xlit", false),
            ],
        );
        check(
            "a/**/b\n",
            &[("a/b", true), ("a/x/y/b", true), ("a/x/c", false)],
        );
        check("", &[("anything", false)]);
    }

    fn tar_paths(bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn context_tarball_honours_dockerignore_but_keeps_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("target/debug")).unwrap();
        fs::create_dir_all(d.join("src")).unwrap();
        fs::create_dir_all(d.join("keep/inner")).unwrap();
        fs::write(d.join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(
            d.join(".dockerignore"),
            "target\n*.md\nDockerfile\n.dockerignore\nkeep\n!keep/inner/wanted\n",
        )
        .unwrap();
        fs::write(d.join("target/debug/big"), vec![0u8; 4096]).unwrap();
        fs::write(d.join("src/main.rs"), "fn main() {}").unwrap();
        fs::write(d.join("README.md"), "docs").unwrap();
        fs::write(d.join("keep/inner/wanted"), "w").unwrap();
        fs::write(d.join("keep/inner/unwanted"), "u").unwrap();
        std::os::unix::fs::symlink("src/main.rs", d.join("link")).unwrap();

        let ignore = DockerIgnore::parse(&fs::read_to_string(d.join(".dockerignore")).unwrap());
        let mut out = Vec::new();
        let stats =
            write_context_tar(d, &ignore, &["Dockerfile", ".dockerignore"], &mut out).unwrap();
        let paths = tar_paths(&out);
        assert_eq!(
            paths,
            [
                ".dockerignore",
                "Dockerfile",
                "keep/inner/wanted",
                "link",
                "src",
                "src/main.rs"
            ],
        );
        assert_eq!(stats.files, 4);
        let size = |p: &str| fs::metadata(d.join(p)).unwrap().len();
        assert_eq!(
            stats.bytes,
            size(".dockerignore")
                + size("Dockerfile")
                + size("keep/inner/wanted")
                + size("src/main.rs")
        );
        assert!(stats.excluded >= 3, "{stats:?}");
        let mut a = tar::Archive::new(&out[..]);
        let link = a
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().to_string_lossy() == "link")
            .unwrap();
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
    }

    #[test]
    fn a_dockerfile_specific_ignore_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("docker")).unwrap();
        assert_eq!(
            ignore_file_for(dir.path(), "docker/Dockerfile"),
            dir.path().join(".dockerignore")
        );
        fs::write(dir.path().join("docker/Dockerfile.dockerignore"), "x").unwrap();
        assert_eq!(
            ignore_file_for(dir.path(), "docker/Dockerfile"),
            dir.path().join("docker/Dockerfile.dockerignore")
        );
    }

    #[test]
    fn build_events_parse_and_unknown_types_are_tolerated() {
        let lines = [
            r#"{"type":"started","id":"01x","image":"web:deployment-01x"}"#,
            r#"{"type":"log","line":"STEP 1/2: FROM scratch"}"#,
            r#"{"type":"error","message":"the build failed at STEP 2/2: COPY missing /x: no such file","step":"STEP 2/2: COPY missing /x","output":["Error: no such file"]}"#,
            r#"{"type":"done","image":"web:deployment-01x","digest":"sha256:ab"}"#,
            r#"{"type":"progress","percent":3}"#,
        ];
        let events: Vec<BuildEvent> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            events[1],
            BuildEvent::Log {
                line: "STEP 1/2: FROM scratch".into()
            }
        );
        assert!(
            matches!(&events[2], BuildEvent::Error { step: Some(s), output, .. } if s == "STEP 2/2: COPY missing /x" && output.len() == 1)
        );
        assert_eq!(
            events[3],
            BuildEvent::Done {
                image: "web:deployment-01x".into(),
                digest: "sha256:ab".into()
            }
        );
        assert_eq!(events[4], BuildEvent::Unknown);
    }
}
