//! A machine's log files: one JSON object per line, size-rotated
//! (`current.log`, `current.log.1` newest rotated, ... `current.log.N` oldest).
//!
//! The shim is the only writer. Readers (the API's `logs` endpoint) work from the
//! files alone, so they see every line whether or not the server was restarted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// The live log file's name.
pub const CURRENT: &str = "current.log";

/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// RFC 3339, UTC, nanoseconds.
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// One line a machine's process wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the shim read the line: RFC 3339 with nanoseconds, UTC.
    pub timestamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line without its newline.
    pub message: String,
    /// The machine.
    #[serde(default)]
    pub machine_id: String,
    /// The instance (config version) that was running.
    #[serde(default)]
    pub instance_id: String,
}

/// Now, formatted as a log timestamp.
pub fn now_timestamp() -> String {
    OffsetDateTime::now_utc()
        .format(TIMESTAMP)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000000Z".to_owned())
}

fn rotated(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{CURRENT}.{n}"))
}

/// The writer side, owned by the shim.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    max_bytes: u64,
    files: usize,
    file: File,
    size: u64,
    machine_id: String,
    instance_id: String,
}

impl LogWriter {
    /// Opens (appending to) `dir/current.log`; rotation keeps `files` files in all,
    /// each at most `max_bytes` (a single longer line still gets a file of its own).
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        files: usize,
        machine_id: &str,
        instance_id: &str,
    ) -> io::Result<LogWriter> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(CURRENT))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            files: files.max(1),
            file,
            size,
            machine_id: machine_id.to_owned(),
            instance_id: instance_id.to_owned(),
        })
    }

    /// Appends one line with the current time. Each line is one `write`, so readers never
    /// see half a line once the call returns.
    pub fn write_line(&mut self, stream: &str, message: &str) -> io::Result<()> {
        let line = LogLine {
            timestamp: now_timestamp(),
            stream: stream.to_owned(),
            message: message.to_owned(),
            machine_id: self.machine_id.clone(),
            instance_id: self.instance_id.clone(),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep_rotated = self.files - 1;
        if keep_rotated == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        match fs::remove_file(rotated(&self.dir, keep_rotated)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep_rotated).rev() {
            match fs::rename(rotated(&self.dir, n), rotated(&self.dir, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(self.dir.join(CURRENT), rotated(&self.dir, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(CURRENT))?;
        self.size = 0;
        Ok(())
    }
}

/// The rotated files, oldest first, then `current.log` (if present).
fn log_files_oldest_first(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut numbered: Vec<(usize, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(CURRENT))
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        numbered.push((n, entry.path()));
    }
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(CURRENT);
    if current.exists() {
        files.push(current);
    }
    Ok(files)
}

fn parse_lines(bytes: &[u8], out: &mut VecDeque<LogLine>, tail: Option<usize>) {
    for raw in bytes.split(|b| *b == b'\n') {
        if raw.is_empty() {
            continue;
        }
        // A line that is not ours (a truncated write after a crash) is skipped, not fatal.
        if let Ok(line) = serde_json::from_slice::<LogLine>(raw) {
            out.push_back(line);
            if let Some(t) = tail
                && out.len() > t
            {
                out.pop_front();
            }
        }
    }
}

/// Every line in `dir`, oldest first; only the last `tail` when given.
pub fn read(dir: &Path, tail: Option<usize>) -> io::Result<Vec<LogLine>> {
    let mut out = VecDeque::new();
    for path in log_files_oldest_first(dir)? {
        match fs::read(&path) {
            Ok(bytes) => parse_lines(&bytes, &mut out, tail),
            // Rotation may have renamed the file between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out.into())
}

/// A reader positioned in the live file.
struct Follower {
    dir: PathBuf,
    /// Whether the log directory has existed: only its removal (not its absence before
    /// the machine's first start) ends a follow.
    seen_dir: bool,
    file: Option<(File, u64)>,
    partial: Vec<u8>,
    pending: VecDeque<LogLine>,
}

impl Follower {
    /// Reads the history (honouring `tail`) and positions the follower at the end of the
    /// live file. The live file is opened first and rotated files with the same inode are
    /// skipped, so a rotation during this call neither loses nor repeats lines.
    fn start(dir: &Path, tail: Option<usize>) -> io::Result<Follower> {
        let current = File::open(dir.join(CURRENT))
            .ok()
            .and_then(|f| f.metadata().ok().map(|m| (f, m.ino())));
        let mut pending = VecDeque::new();
        for path in log_files_oldest_first(dir)? {
            if path.file_name().is_some_and(|n| n == CURRENT) {
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if current.as_ref().is_some_and(|(_, ino)| *ino == meta.ino()) {
                continue;
            }
            if let Ok(bytes) = fs::read(&path) {
                parse_lines(&bytes, &mut pending, tail);
            }
        }
        let mut follower = Follower {
            dir: dir.to_path_buf(),
            seen_dir: dir.exists(),
            file: current,
            partial: Vec::new(),
            pending,
        };
        follower.read_available()?;
        if let Some(t) = tail {
            while follower.pending.len() > t {
                follower.pending.pop_front();
            }
        }
        Ok(follower)
    }

    /// Reads whatever complete lines the open file has gained.
    fn read_available(&mut self) -> io::Result<()> {
        let Some((file, _)) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.partial.extend_from_slice(&buf);
        if let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=last_nl).collect();
            parse_lines(&complete, &mut self.pending, None);
        }
        Ok(())
    }

    /// Switches to a new live file after rotation (or once it first appears). Returns
    /// false when the log directory is gone (the machine was destroyed).
    fn check_rotation(&mut self) -> io::Result<bool> {
        let meta = match fs::metadata(self.dir.join(CURRENT)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let exists = self.dir.exists();
                self.seen_dir |= exists;
                return Ok(exists || !self.seen_dir);
            }
            Err(e) => return Err(e),
        };
        self.seen_dir = true;
        let old_ino = self.file.as_ref().map(|(_, ino)| *ino);
        if old_ino == Some(meta.ino()) {
            return Ok(true);
        }
        // Drain the old file (now `current.log.1` or older) before moving on.
        self.read_available()?;
        self.partial.clear();
        // Open the new live file first, then read every rotated file that came after the
        // old one and before the new one: several rotations may have happened between polls.
        let file = File::open(self.dir.join(CURRENT))?;
        let new_ino = file.metadata()?.ino();
        let mut after_old = old_ino.is_none();
        for path in log_files_oldest_first(&self.dir)? {
            let Ok(m) = fs::metadata(&path) else { continue };
            if m.ino() == new_ino {
                break;
            }
            if Some(m.ino()) == old_ino {
                after_old = true;
                continue;
            }
            if after_old && let Ok(bytes) = fs::read(&path) {
                parse_lines(&bytes, &mut self.pending, None);
            }
        }
        self.file = Some((file, new_ino));
        self.read_available()?;
        Ok(true)
    }
}

/// Lines from `dir` (the last `tail` of the history first), then new lines as the shim
/// writes them, across rotations; waits for the directory if it does not exist yet, and
/// ends when it is removed.
pub fn follow(
    dir: PathBuf,
    tail: Option<usize>,
) -> impl Stream<Item = io::Result<LogLine>> + Send + 'static {
    enum State {
        Init(PathBuf, Option<usize>),
        Running(Box<Follower>),
        Done,
    }
    futures_util::stream::unfold(State::Init(dir, tail), |state| async move {
        let mut follower = match state {
            State::Done => return None,
            State::Init(dir, tail) => match Follower::start(&dir, tail) {
                Ok(f) => Box::new(f),
                Err(e) => return Some((Err(e), State::Done)),
            },
            State::Running(f) => f,
        };
        loop {
            if let Some(line) = follower.pending.pop_front() {
                return Some((Ok(line), State::Running(follower)));
            }
            if let Err(e) = follower.read_available() {
                return Some((Err(e), State::Done));
            }
            if !follower.pending.is_empty() {
                continue;
            }
            match follower.check_rotation() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some((Err(e), State::Done)),
            }
            if follower.pending.is_empty() {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn messages(lines: &[LogLine]) -> Vec<String> {
        lines.iter().map(|l| l.message.clone()).collect()
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 300, 3, "m", "i").unwrap();
        for n in 0..40 {
            w.write_line("stdout", &format!("line {n}")).unwrap();
        }
        let files = log_files_oldest_first(dir.path()).unwrap();
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 300);
        }
        let all = read(dir.path(), None).unwrap();
        let msgs = messages(&all);
        // The kept lines are the newest ones, contiguous and in order.
        let first: usize = msgs[0].strip_prefix("line ").unwrap().parse().unwrap();
        let want: Vec<String> = (first..40).map(|n| format!("line {n}")).collect();
        assert_eq!(msgs, want);
        assert!(first > 0, "rotation should have dropped the oldest lines");
        let tail = read(dir.path(), Some(2)).unwrap();
        assert_eq!(messages(&tail), vec!["line 38", "line 39"]);
        assert!(tail[0].timestamp.ends_with('Z') && tail[0].timestamp.len() == 30);
    }

    #[test]
    fn a_single_file_is_truncated_instead_of_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 200, 1, "m", "i").unwrap();
        for n in 0..10 {
            w.write_line("stderr", &format!("line {n}")).unwrap();
        }
        assert_eq!(log_files_oldest_first(dir.path()).unwrap().len(), 1);
        let all = read(dir.path(), None).unwrap();
        assert_eq!(all.last().unwrap().message, "line 9");
        assert_eq!(all.last().unwrap().stream, "stderr");
    }

    #[tokio::test]
    async fn follow_waits_for_a_log_dir_that_does_not_exist_yet() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("logs");
        let mut stream = Box::pin(follow(dir.clone(), None));
        let pending = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(
            pending.is_err(),
            "follow ended before the machine ever started"
        );
        let mut w = LogWriter::open(&dir, 1024, 2, "m", "i").unwrap();
        w.write_line("stdout", "first").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("follow stalled")
            .unwrap()
            .unwrap();
        assert_eq!(got.message, "first");
    }

    #[tokio::test]
    async fn follow_sees_new_lines_across_rotation_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 400, 4, "m", "i").unwrap();
        for n in 0..3 {
            w.write_line("stdout", &format!("line {n}")).unwrap();
        }
        let mut stream = Box::pin(follow(dir.path().to_path_buf(), Some(2)));
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.message, "line 1");
        assert_eq!(stream.next().await.unwrap().unwrap().message, "line 2");
        // Enough lines to rotate several times while the follower is between polls.
        for n in 3..12 {
            w.write_line("stdout", &format!("line {n}")).unwrap();
        }
        for n in 3..12 {
            let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("follow stalled")
                .unwrap()
                .unwrap();
            assert_eq!(got.message, format!("line {n}"));
        }
        drop(w);
        fs::remove_dir_all(dir.path()).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("follow did not end after the directory was removed");
        assert!(end.is_none());
    }
}
