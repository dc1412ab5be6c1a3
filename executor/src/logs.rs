//! Task output on disk: one file `output.log` of lines `<unix_ms> <o|e> <text>`, rotated by size
//! (the shim writes it), and the reader behind `Executor::logs` (kept lines, tail, follow).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{LogLine, LogOptions, Stream};

/// The current log file; rotated ones are `output.log.1` (newer) … `output.log.N` (older).
pub(crate) const LOG_FILE: &str = "output.log";
/// Size at which the log is rotated.
pub(crate) const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// How many rotated files are kept.
pub(crate) const KEEP_ROTATED: usize = 2;
/// Longest line kept whole; longer (or unterminated) output is split into pieces this long.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
/// How often a follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Appends one record `<ts> <o|e> <text>\n` to `out`.
pub(crate) fn encode_line(ts_ms: u64, stream: Stream, text: &[u8], out: &mut Vec<u8>) {
    let tag = match stream {
        Stream::Stdout => 'o',
        Stream::Stderr => 'e',
    };
    out.extend_from_slice(format!("{ts_ms} {tag} ").as_bytes());
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Parses one record (without its newline); `None` for anything malformed.
pub(crate) fn parse_line(line: &[u8]) -> Option<LogLine> {
    let sp = line.iter().position(|b| *b == b' ')?;
    let ts: u64 = std::str::from_utf8(&line[..sp]).ok()?.parse().ok()?;
    let rest = &line[sp + 1..];
    let stream = match rest.first()? {
        b'o' => Stream::Stdout,
        b'e' => Stream::Stderr,
        _ => return None,
    };
    let text = match rest.get(1) {
        None => &[][..],
        Some(b' ') => &rest[2..],
        Some(_) => return None,
    };
    Some(LogLine {
        timestamp_ms: ts,
        stream,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// Cuts a byte stream into lines: at newlines, and pieces of at most `max` bytes.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter with pieces of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(1),
        }
    }

    fn emit_long(&self, line: &[u8], emit: &mut dyn FnMut(&[u8])) {
        if line.is_empty() {
            emit(line);
        }
        for piece in line.chunks(self.max) {
            emit(piece);
        }
    }

    /// Feeds bytes, emitting every complete line (and pieces of overlong partial lines).
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.emit_long(&data[..nl], emit);
            } else {
                self.partial.extend_from_slice(&data[..nl]);
                let line = std::mem::take(&mut self.partial);
                self.emit_long(&line, emit);
            }
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() > self.max {
            let rest = self.partial.split_off(self.max);
            let piece = std::mem::replace(&mut self.partial, rest);
            emit(&piece);
        }
    }

    /// Emits what is left of an unterminated last line.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit(&line);
        }
    }
}

/// The path of log file `n` (0 = current).
fn log_path(dir: &Path, n: usize) -> PathBuf {
    if n == 0 {
        dir.join(LOG_FILE)
    } else {
        dir.join(format!("{LOG_FILE}.{n}"))
    }
}

/// Writes records to `output.log`, rotating it at `max_bytes` and keeping `keep` older files.
/// Write errors (a full disk) drop lines but never stop the task.
pub(crate) struct LogWriter {
    dir: PathBuf,
    file: Option<BufWriter<File>>,
    size: u64,
    max_bytes: u64,
    keep: usize,
    buf: Vec<u8>,
}

impl LogWriter {
    /// Opens (appends to) the log of task directory `dir`.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let mut w = LogWriter {
            dir: dir.to_path_buf(),
            file: None,
            size: 0,
            max_bytes,
            keep,
            buf: Vec::new(),
        };
        w.open_current()?;
        Ok(w)
    }

    fn open_current(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&self.dir, 0))?;
        self.size = f.metadata()?.len();
        self.file = Some(BufWriter::with_capacity(64 * 1024, f));
        Ok(())
    }

    /// Appends one line (the caller has split it already).
    pub fn write_line(&mut self, ts_ms: u64, stream: Stream, text: &[u8]) {
        self.buf.clear();
        encode_line(ts_ms, stream, text, &mut self.buf);
        let len = self.buf.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            if let Err(e) = self.rotate() {
                eprintln!("shoal task shim: rotating {}: {e}", self.dir.display());
            }
        }
        if self.file.is_none() {
            let _ = self.open_current();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(&self.buf).is_ok() {
                self.size += len;
            }
        }
    }

    /// Pushes buffered records to the file, so that readers see them.
    pub fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            let _ = f.flush();
        }
        if self.keep == 0 {
            let _ = fs::remove_file(log_path(&self.dir, 0));
        } else {
            for n in (1..self.keep).rev() {
                match fs::rename(log_path(&self.dir, n), log_path(&self.dir, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(log_path(&self.dir, 0), log_path(&self.dir, 1))?;
        }
        self.open_current()
    }
}

/// One log file being read, with the unterminated tail of what was read so far.
struct Reading {
    file: File,
    ino: u64,
    splitter: LineSplitter,
}

impl Reading {
    fn open(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        let ino = file.metadata().ok()?.ino();
        Some(Reading {
            file,
            ino,
            splitter: LineSplitter::new(usize::MAX),
        })
    }

    /// Reads to the end of the file, passing each complete record to `f`.
    fn read_available(&mut self, f: &mut dyn FnMut(LogLine)) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.splitter.push(&buf[..n], &mut |line| {
                    if let Some(l) = parse_line(line) {
                        f(l)
                    }
                }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Streams the log of task directory `dir` into `tx` (run on its own thread): the kept lines
/// (or the last `tail`), then, when following, new lines until `tx` is closed or `dir` is gone.
pub(crate) fn stream_logs(
    dir: PathBuf,
    options: LogOptions,
    tx: tokio::sync::mpsc::Sender<LogLine>,
) {
    // Open every file before reading any, so a rotation in between loses nothing.
    let older: Vec<Reading> = (1..=KEEP_ROTATED)
        .rev()
        .filter_map(|n| Reading::open(&log_path(&dir, n)))
        .collect();
    let mut current = Reading::open(&log_path(&dir, 0));

    let mut kept: VecDeque<LogLine> = VecDeque::new();
    let mut closed = false;
    {
        let mut take = |line: LogLine| {
            if closed {
                return;
            }
            match options.tail {
                Some(0) => {}
                Some(n) => {
                    if kept.len() == n {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
                None => closed = tx.blocking_send(line).is_err(),
            }
        };
        for mut r in older {
            r.read_available(&mut take);
        }
        if let Some(r) = current.as_mut() {
            r.read_available(&mut take);
        }
    }
    for line in kept {
        if closed || tx.blocking_send(line).is_err() {
            return;
        }
    }
    if closed || !options.follow {
        return;
    }

    let mut send = |line: LogLine| {
        let _ = tx.blocking_send(line);
    };
    loop {
        std::thread::sleep(FOLLOW_POLL);
        if tx.is_closed() || !dir.is_dir() {
            return;
        }
        if let Some(r) = current.as_mut() {
            r.read_available(&mut send);
        }
        let now_ino = fs::metadata(log_path(&dir, 0)).ok().map(|m| m.ino());
        let rotated = match (&current, now_ino) {
            (Some(r), Some(ino)) => r.ino != ino,
            (None, Some(_)) => true,
            _ => false,
        };
        if rotated {
            let mut missed_from = KEEP_ROTATED;
            if let Some(r) = current.as_mut() {
                // Lines written to the old file just before it was renamed.
                r.read_available(&mut send);
                // Files rotated after ours (when several rotations happened between two polls).
                missed_from = (1..=KEEP_ROTATED)
                    .find(|n| fs::metadata(log_path(&dir, *n)).map(|m| m.ino()).ok() == Some(r.ino))
                    .map_or(KEEP_ROTATED, |n| n - 1);
            }
            for n in (1..=missed_from).rev() {
                if let Some(mut r) = Reading::open(&log_path(&dir, n)) {
                    r.read_available(&mut send);
                }
            }
            current = Reading::open(&log_path(&dir, 0));
            if let Some(r) = current.as_mut() {
                r.read_available(&mut send);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |l| out.push(l.to_vec()));
        }
        s.finish(&mut |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_split_at_newlines_and_length() {
        assert_eq!(
            split(100, &[b"a\nb", b"c\n\nd"]),
            vec![b"a".to_vec(), b"bc".to_vec(), b"".to_vec(), b"d".to_vec()]
        );
        assert_eq!(
            split(4, &[b"0123456789\n", b"ab", b"cdef"]),
            vec![
                b"0123".to_vec(),
                b"4567".to_vec(),
                b"89".to_vec(),
                b"abcd".to_vec(),
                b"ef".to_vec()
            ]
        );
        // A line of exactly the limit stays whole.
        assert_eq!(split(4, &[b"abcd", b"\n"]), vec![b"abcd".to_vec()]);
    }

    #[test]
    fn records_round_trip_and_junk_is_skipped() {
        let mut buf = Vec::new();
        encode_line(1700, Stream::Stderr, b"hello world", &mut buf);
        assert_eq!(buf, b"1700 e hello world\n");
        let l = parse_line(&buf[..buf.len() - 1]).unwrap();
        assert_eq!(l.timestamp_ms, 1700);
        assert_eq!(l.stream, Stream::Stderr);
        assert_eq!(l.text, "hello world");
        assert_eq!(parse_line(b"5 o").unwrap().text, "");
        assert_eq!(parse_line(b"5 o ").unwrap().text, "");
        for bad in [&b""[..], b"x o a", b"5 x a", b"5 oa", b"5"] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse_line(b"5 o \xff").unwrap().text, "\u{fffd}");
    }

    fn read_all(dir: &Path, tail: Option<usize>) -> Vec<String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
        stream_logs(
            dir.to_path_buf(),
            LogOptions {
                tail,
                follow: false,
            },
            tx,
        );
        let mut out = Vec::new();
        while let Ok(l) = rx.try_recv() {
            out.push(l.text);
        }
        out
    }

    #[test]
    fn rotation_keeps_bounded_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 100, 2).unwrap();
        for i in 0..100 {
            w.write_line(1, Stream::Stdout, format!("line{i:03}").as_bytes());
        }
        w.flush();
        let mut total = 0;
        for n in 0..=2 {
            let len = fs::metadata(log_path(dir.path(), n)).unwrap().len();
            assert!(len <= 100, "file {n} has {len} bytes");
            total += len;
        }
        assert!(!log_path(dir.path(), 3).exists());
        assert!(total > 200);
        let all = read_all(dir.path(), None);
        assert_eq!(all.last().unwrap(), "line099");
        let first: usize = all[0][4..].parse().unwrap();
        let expect: Vec<String> = (first..100).map(|i| format!("line{i:03}")).collect();
        assert_eq!(all, expect);
        assert_eq!(read_all(dir.path(), Some(2)), vec!["line098", "line099"]);
        assert!(read_all(dir.path(), Some(0)).is_empty());
    }

    #[test]
    fn following_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 150, 2).unwrap();
        w.write_line(1, Stream::Stdout, b"before");
        w.flush();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let d = dir.path().to_path_buf();
        let reader = std::thread::spawn(move || {
            stream_logs(
                d,
                LogOptions {
                    tail: None,
                    follow: true,
                },
                tx,
            )
        });
        // About 13 records per file: a rotation every ~260 ms; rotations between two polls
        // (a loaded machine) are caught up from the rotated files.
        for i in 0..40 {
            w.write_line(2, Stream::Stderr, format!("line{i:02}").as_bytes());
            w.flush();
            std::thread::sleep(Duration::from_millis(20));
        }
        // A burst: up to two rotations before the follower looks again.
        for i in 40..60 {
            w.write_line(2, Stream::Stderr, format!("line{i:02}").as_bytes());
        }
        w.flush();
        assert!(log_path(dir.path(), 2).exists(), "the log rotated");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while got.len() < 61 && std::time::Instant::now() < deadline {
            match rx.try_recv() {
                Ok(l) => got.push(l.text),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let mut expect = vec!["before".to_string()];
        expect.extend((0..60).map(|i| format!("line{i:02}")));
        assert_eq!(got, expect);
        // Removing the task directory ends the follower.
        drop(w);
        fs::remove_dir_all(dir.path()).unwrap();
        reader.join().unwrap();
    }

    #[test]
    fn a_missing_log_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_all(dir.path(), None).is_empty());
    }
}
