//! METEOR 1.5 through its jar, exactly as pycocoevalcap 1.2's `meteor/meteor.py` drives it:
//! `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`, started in the jar's folder,
//! one `SCORE ||| refs ||| hypothesis` request per image (the answer is 23 statistics),
//! then one `EVAL ||| stats…` request whose answers are the per-image scores and the
//! corpus score. The request lines and the statistics arithmetic live in
//! `mmloop_metrics::meteor`.
//!
//! The jar ships with pycocoevalcap (`pip install pycocoevalcap==1.2`); it is found by
//! asking Python where that package is, or taken from an explicit path. Without Java or
//! the jar this returns an error: METEOR is then unavailable, never approximated.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use mmloop_metrics::meteor::{MeteorStats, StatsParseError, eval_line, score_line};
use thiserror::Error;

/// File name of the jar inside pycocoevalcap's `meteor/` folder.
pub const JAR_NAME: &str = "meteor-1.5.jar";

#[derive(Debug, Error)]
pub enum MeteorJarError {
    #[error(
        "METEOR needs Java, which could not be started ({0}); install a JRE (e.g. `apt-get install openjdk-17-jre-headless`)"
    )]
    JavaMissing(String),
    #[error("METEOR jar not found ({0}); `pip install pycocoevalcap==1.2` or pass the path to {JAR_NAME}")]
    JarMissing(String),
    #[error(
        "METEOR jar stopped answering ({0}); run `java -jar {JAR_NAME} - - -stdio -l en -norm` in its folder to see why"
    )]
    Pipe(String),
    #[error("METEOR jar answered {answer:?} to {request}; check that it is meteor-1.5.jar from pycocoevalcap 1.2")]
    BadAnswer { request: String, answer: String },
    #[error(transparent)]
    Stats(#[from] StatsParseError),
}

/// Finds `meteor-1.5.jar`: `explicit` if given (it must exist), else in the pycocoevalcap
/// that `python3` imports.
pub fn find_jar(explicit: Option<&Path>) -> Result<PathBuf, MeteorJarError> {
    find_jar_with(explicit, OsStr::new("python3"))
}

/// [`find_jar`] asking a given Python interpreter.
pub fn find_jar_with(explicit: Option<&Path>, python: &OsStr) -> Result<PathBuf, MeteorJarError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(MeteorJarError::JarMissing(format!("{} is not a file", p.display())))
        };
    }
    // pycocoevalcap is a namespace package: `__file__` is None, `__path__` is not.
    let out = Command::new(python)
        .args(["-c", "import pycocoevalcap; print(list(pycocoevalcap.__path__)[0])"])
        .output()
        .map_err(|e| MeteorJarError::JarMissing(format!("cannot run {}: {e}", python.to_string_lossy())))?;
    if !out.status.success() {
        return Err(MeteorJarError::JarMissing(format!("{} cannot import pycocoevalcap", python.to_string_lossy())));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let jar = Path::new(&dir).join("meteor").join(JAR_NAME);
    if jar.is_file() { Ok(jar) } else { Err(MeteorJarError::JarMissing(format!("{} does not exist", jar.display()))) }
}

/// A running `meteor-1.5.jar -stdio` process.
pub struct MeteorJar {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl MeteorJar {
    /// Starts the jar as pycocoevalcap does (same arguments, working directory = the jar's).
    pub fn spawn(jar: &Path) -> Result<Self, MeteorJarError> {
        if !jar.is_file() {
            return Err(MeteorJarError::JarMissing(format!("{} is not a file", jar.display())));
        }
        let dir = jar.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut child = Command::new("java")
            .args(["-jar", "-Xmx2G"])
            .arg(jar.file_name().unwrap_or(jar.as_os_str()))
            .args(["-", "-", "-stdio", "-l", "en", "-norm"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| MeteorJarError::JavaMissing(e.to_string()))?;
        // Drain stderr so a chatty JVM can never block on a full pipe.
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = err.read_to_end(&mut sink);
            });
        }
        let stdin = child.stdin.take().ok_or_else(|| MeteorJarError::Pipe("no stdin".into()))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| MeteorJarError::Pipe("no stdout".into()))?);
        Ok(MeteorJar { child, stdin, stdout, line: String::new() })
    }

    fn request(&mut self, line: &str) -> Result<(), MeteorJarError> {
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|_| self.stdin.write_all(b"\n"))
            .and_then(|_| self.stdin.flush())
            .map_err(|e| MeteorJarError::Pipe(e.to_string()))
    }

    fn answer(&mut self) -> Result<String, MeteorJarError> {
        self.line.clear();
        let n = self.stdout.read_line(&mut self.line).map_err(|e| MeteorJarError::Pipe(e.to_string()))?;
        if n == 0 {
            let status = self.child.try_wait().ok().flatten();
            return Err(MeteorJarError::Pipe(format!("end of output, exit status {status:?}")));
        }
        Ok(self.line.trim().to_owned())
    }

    /// `Meteor._stat`: the statistics line for one hypothesis and its references.
    pub fn stats_line<R: AsRef<str>>(&mut self, hypothesis: &str, references: &[R]) -> Result<String, MeteorJarError> {
        self.request(&score_line(hypothesis, references))?;
        self.answer()
    }

    /// The `EVAL` request of `Meteor.compute_score`: per-image scores and the corpus score.
    pub fn eval(&mut self, stats_lines: &[String]) -> Result<(Vec<f64>, f64), MeteorJarError> {
        self.request(&eval_line(stats_lines))?;
        let mut read = || -> Result<f64, MeteorJarError> {
            let a = self.answer()?;
            a.parse::<f64>().map_err(|_| MeteorJarError::BadAnswer { request: "EVAL".into(), answer: a })
        };
        let per_image = (0..stats_lines.len()).map(|_| read()).collect::<Result<Vec<f64>, _>>()?;
        Ok((per_image, read()?))
    }
}

impl Drop for MeteorJar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// METEOR of a corpus as pycocoevalcap 1.2 reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct MeteorScores {
    /// The jar's corpus score (from summed statistics, not a mean).
    pub corpus: f64,
    /// The jar's per-image scores, in input order.
    pub per_image: Vec<f64>,
    /// Each image's statistics, for re-aggregation with `mmloop_metrics::meteor`.
    pub stats: Vec<MeteorStats>,
}

/// Runs `Meteor().compute_score` on tokenized captions: one hypothesis per image.
/// pycocoevalcap 1.2, METEOR 1.5 jar.
pub fn meteor<H: AsRef<str>, R: AsRef<str>>(
    jar: &Path,
    hyps: &[H],
    refs: &[Vec<R>],
) -> Result<MeteorScores, MeteorJarError> {
    assert_eq!(hyps.len(), refs.len(), "one hypothesis per image");
    let mut m = MeteorJar::spawn(jar)?;
    let mut lines = Vec::with_capacity(hyps.len());
    let mut stats = Vec::with_capacity(hyps.len());
    for (h, rs) in hyps.iter().zip(refs) {
        let line = m.stats_line(h.as_ref(), rs)?;
        stats.push(MeteorStats::parse(&line)?);
        lines.push(line);
    }
    let (per_image, corpus) = m.eval(&lines)?;
    Ok(MeteorScores { corpus, per_image, stats })
}
