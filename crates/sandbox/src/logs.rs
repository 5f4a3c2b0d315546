//! Container logs in the CRI format the kubelet writes (`<RFC3339 nano time> <stream> <F|P> <text>`),
//! one file per container start, so logs survive restarts and can be followed. The line format is
//! pure; the pump copies a pipe into a file (and optionally to a live reader); [`read`] turns a
//! file back into what `kubectl logs` shows (tail, since, timestamps, byte limit, follow).

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Longest line kept in one record; longer lines are split into partial (`P`) records.
pub const MAX_LINE: usize = 16 * 1024;

/// One CRI log record for `text` (without its newline).
pub fn format_line(time: jiff::Timestamp, stream: Stream, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{} {} {} ",
        time.strftime("%Y-%m-%dT%H:%M:%S.%9fZ"),
        stream.as_str(),
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// A parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: String,
    pub partial: bool,
    pub text: Vec<u8>,
}

/// Parses one record (without its trailing newline).
pub fn parse_line(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let stream = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default().to_vec();
    Some(Record {
        time,
        stream,
        partial: tag == b"P",
        text,
    })
}

/// What the pump sends to a live reader: the raw bytes of the stream.
pub type Tee = tokio::sync::mpsc::UnboundedSender<(Stream, Vec<u8>)>;

/// Copies `pipe` into the log file at `path` (appending) until EOF.
pub async fn pump(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    path: &Path,
    tee: Option<Tee>,
) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let mut reader = BufReader::with_capacity(MAX_LINE, pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            break;
        }
        if let Some(t) = &tee {
            let _ = t.send((stream, buf.clone()));
        }
        let (text, partial) = match buf.strip_suffix(b"\n") {
            Some(t) => (t, false),
            None => (&buf[..], n == MAX_LINE),
        };
        file.write_all(&format_line(jiff::Timestamp::now(), stream, partial, text))
            .await?;
    }
    file.flush().await
}

use tokio::io::AsyncReadExt as _;

/// What `kubectl logs` asks of one log file.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub follow: bool,
    /// Prefix each line with its record's RFC 3339 nano time and a space.
    pub timestamps: bool,
    /// Only the last N lines (partial records joined count as one line).
    pub tail_lines: Option<u64>,
    /// Only lines whose record time is not before this.
    pub since: Option<jiff::Timestamp>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// How often a followed file is looked at again once read to its end.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// How much of the file is read at once (and at most one output item, before the prefixes).
const READ_CHUNK: usize = 64 * 1024;

/// A CRI log file as `kubectl logs` shows it: each record's content, partial records (`P`) joined
/// with the following ones, prefixed with the record's RFC 3339 nano timestamp (as kubelet prints
/// it: Go's `RFC3339Nano`, trailing zeros dropped) and a space when `timestamps` (one prefix per
/// joined line, the time of its first record). `tail_lines` counts whole lines from the end;
/// `since` filters by record time; `limit_bytes` truncates the output. With `follow`, keeps
/// returning new lines as they are appended (the file is looked at every 100 ms) until `done`
/// resolves and the file has been read to its end. A file that cannot be opened is a single error
/// item.
pub fn read(
    path: std::path::PathBuf,
    options: ReadOptions,
    done: futures::future::BoxFuture<'static, ()>,
) -> futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    use futures::StreamExt as _;
    let reader = FileReader {
        formatter: Formatter::new(&options),
        path,
        options,
        done: Some(done),
        file: None,
        opened: false,
        pending: Vec::new(),
        finished: false,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        let item = reader.next_item().await?;
        Some((item, reader))
    })
    .boxed()
}

/// Turns records into output (sans-IO): joins partial records, applies `since`, the timestamp
/// prefix and the byte limit.
#[derive(Debug)]
struct Formatter {
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    /// Bytes still allowed; `None` = no limit.
    remaining: Option<u64>,
    /// The next record starts a new line (the previous one was `F`).
    at_line_start: bool,
    /// The current line is before `since`.
    skipping: bool,
}

impl Formatter {
    fn new(options: &ReadOptions) -> Formatter {
        Formatter {
            timestamps: options.timestamps,
            since: options.since,
            remaining: options.limit_bytes,
            at_line_start: true,
            skipping: false,
        }
    }

    /// The byte limit has been reached: nothing more will be written.
    fn exhausted(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Appends the output for one record (`raw` without its newline) to `out`. Lines that are
    /// not CRI records are skipped.
    fn record(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if self.exhausted() {
            return;
        }
        let Some(record) = parse_line(raw) else {
            return;
        };
        let time = record.time.parse::<jiff::Timestamp>().ok();
        if self.at_line_start {
            self.skipping = match (self.since, time) {
                (Some(since), Some(time)) => time < since,
                _ => false,
            };
        }
        if !self.skipping {
            let start = out.len();
            if self.at_line_start && self.timestamps {
                match time {
                    Some(t) => out.extend_from_slice(t.to_string().as_bytes()),
                    None => out.extend_from_slice(record.time.as_bytes()),
                }
                out.push(b' ');
            }
            out.extend_from_slice(&record.text);
            if !record.partial {
                out.push(b'\n');
            }
            if let Some(remaining) = &mut self.remaining {
                let added = (out.len() - start) as u64;
                if added >= *remaining {
                    out.truncate(start + *remaining as usize);
                    *remaining = 0;
                } else {
                    *remaining -= added;
                }
            }
        }
        self.at_line_start = !record.partial;
    }
}

/// Where, in a file's complete records, the last `n` lines start (sans-IO, fed chunk by chunk).
#[derive(Debug)]
struct TailFinder {
    n: u64,
    /// Offsets where the last (up to n) lines start.
    starts: std::collections::VecDeque<u64>,
    /// Offset of the next record.
    offset: u64,
    at_line_start: bool,
    /// An incomplete record carried over from the previous chunk.
    pending: Vec<u8>,
}

impl TailFinder {
    fn new(n: u64) -> TailFinder {
        TailFinder {
            n,
            starts: std::collections::VecDeque::new(),
            offset: 0,
            at_line_start: true,
            pending: Vec::new(),
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(pos) = chunk.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&chunk[..pos]);
            chunk = &chunk[pos + 1..];
            let partial = parse_line(&self.pending).is_some_and(|r| r.partial);
            if self.at_line_start && self.n > 0 {
                if self.starts.len() as u64 == self.n {
                    self.starts.pop_front();
                }
                self.starts.push_back(self.offset);
            }
            self.at_line_start = !partial;
            self.offset += self.pending.len() as u64 + 1;
            self.pending.clear();
        }
        self.pending.extend_from_slice(chunk);
    }

    /// The offset to start reading at.
    fn start(&self) -> u64 {
        match self.starts.front() {
            Some(start) => *start,
            None => self.offset,
        }
    }
}

/// The state of one [`read`] stream.
struct FileReader {
    path: std::path::PathBuf,
    options: ReadOptions,
    formatter: Formatter,
    done: Option<futures::future::BoxFuture<'static, ()>>,
    file: Option<tokio::fs::File>,
    opened: bool,
    /// An incomplete record (the writer has not finished its line yet).
    pending: Vec<u8>,
    finished: bool,
}

impl FileReader {
    async fn next_item(&mut self) -> Option<std::io::Result<bytes::Bytes>> {
        if self.finished {
            return None;
        }
        if !self.opened {
            self.opened = true;
            match open(&self.path, self.options.tail_lines).await {
                Ok(file) => self.file = Some(file),
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let file = self.file.as_mut()?;
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            };
            let mut out = Vec::new();
            if n > 0 {
                self.pending.extend_from_slice(&buf[..n]);
                let mut consumed = 0;
                while let Some(pos) = self.pending[consumed..].iter().position(|b| *b == b'\n') {
                    self.formatter
                        .record(&self.pending[consumed..consumed + pos], &mut out);
                    consumed += pos + 1;
                }
                self.pending.drain(..consumed);
            } else {
                // At the end of the file for now.
                let more = self.options.follow && self.done.is_some();
                if !more {
                    if !self.pending.is_empty() {
                        let last = std::mem::take(&mut self.pending);
                        self.formatter.record(&last, &mut out);
                    }
                    self.finished = true;
                } else if let Some(done) = self.done.as_mut() {
                    tokio::select! {
                        () = done => self.done = None,
                        () = tokio::time::sleep(FOLLOW_POLL) => {}
                    }
                }
            }
            if self.formatter.exhausted() {
                self.finished = true;
            }
            if !out.is_empty() {
                return Some(Ok(bytes::Bytes::from(out)));
            }
            if self.finished {
                return None;
            }
        }
    }
}

/// Opens the log file at `path` at the first byte to show (the start of the last `tail_lines`).
async fn open(path: &Path, tail_lines: Option<u64>) -> std::io::Result<tokio::fs::File> {
    use tokio::io::AsyncSeekExt as _;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if let Some(n) = tail_lines {
        let mut finder = TailFinder::new(n);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let read = file.read(&mut buf).await?;
            if read == 0 {
                break;
            }
            finder.feed(&buf[..read]);
        }
        file.seek(std::io::SeekFrom::Start(finder.start())).await?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trip() {
        let t: jiff::Timestamp = "2026-01-02T03:04:05.5Z".parse().unwrap();
        let l = format_line(t, Stream::Stderr, false, b"hello world");
        assert_eq!(l, b"2026-01-02T03:04:05.500000000Z stderr F hello world\n");
        let r = parse_line(l.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(r.stream, "stderr");
        assert_eq!(r.text, b"hello world");
        assert!(!r.partial);
    }

    #[tokio::test]
    async fn pump_writes_records_and_splits_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 10]);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        pump(&input[..], Stream::Stdout, &p, Some(tx))
            .await
            .unwrap();
        let text = std::fs::read(&p).unwrap();
        let recs: Vec<Record> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_line(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].text, b"one");
        assert!(recs[2].partial);
        assert_eq!(recs[2].text.len(), MAX_LINE);
        assert_eq!(recs[3].text.len(), 10);
        let mut teed = Vec::new();
        while let Ok((_, b)) = rx.try_recv() {
            teed.extend(b);
        }
        assert_eq!(teed, input);
    }

    fn rec(time: &str, stream: Stream, partial: bool, text: &str) -> Vec<u8> {
        format_line(time.parse().unwrap(), stream, partial, text.as_bytes())
    }

    /// A log file with: a (10:00:01), b (10:00:02, stderr), "c1c2" joined from P+F
    /// (10:00:03, 10:00:04), d (10:00:05).
    fn sample() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(rec("2026-01-02T10:00:01Z", Stream::Stdout, false, "a"));
        f.extend(rec("2026-01-02T10:00:02.5Z", Stream::Stderr, false, "b"));
        f.extend(rec(
            "2026-01-02T10:00:03.123456789Z",
            Stream::Stdout,
            true,
            "c1",
        ));
        f.extend(rec("2026-01-02T10:00:04Z", Stream::Stdout, false, "c2"));
        f.extend(rec("2026-01-02T10:00:05Z", Stream::Stdout, false, "d"));
        f
    }

    fn never() -> futures::future::BoxFuture<'static, ()> {
        Box::pin(futures::future::pending())
    }

    async fn collect(path: &Path, options: ReadOptions) -> std::io::Result<String> {
        use futures::TryStreamExt as _;
        let chunks: Vec<bytes::Bytes> = read(path.to_path_buf(), options, never())
            .try_collect()
            .await?;
        Ok(String::from_utf8(chunks.concat()).unwrap())
    }

    async fn sample_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, sample()).unwrap();
        (dir, path)
    }

    #[tokio::test]
    async fn read_joins_partial_records() {
        let (_dir, path) = sample_file().await;
        let out = collect(&path, ReadOptions::default()).await.unwrap();
        assert_eq!(out, "a\nb\nc1c2\nd\n");
    }

    #[tokio::test]
    async fn read_with_timestamps_as_kubelet_prints_them() {
        let (_dir, path) = sample_file().await;
        let options = ReadOptions {
            timestamps: true,
            ..Default::default()
        };
        let out = collect(&path, options).await.unwrap();
        assert_eq!(
            out,
            "2026-01-02T10:00:01Z a\n\
             2026-01-02T10:00:02.5Z b\n\
             2026-01-02T10:00:03.123456789Z c1c2\n\
             2026-01-02T10:00:05Z d\n"
        );
    }

    #[tokio::test]
    async fn read_tail_counts_whole_lines() {
        let (_dir, path) = sample_file().await;
        for (n, want) in [
            (0, ""),
            (1, "d\n"),
            (2, "c1c2\nd\n"),
            (3, "b\nc1c2\nd\n"),
            (4, "a\nb\nc1c2\nd\n"),
            (10, "a\nb\nc1c2\nd\n"),
        ] {
            let options = ReadOptions {
                tail_lines: Some(n),
                ..Default::default()
            };
            assert_eq!(collect(&path, options).await.unwrap(), want, "tail {n}");
        }
    }

    #[tokio::test]
    async fn read_since_filters_by_record_time() {
        let (_dir, path) = sample_file().await;
        let options = ReadOptions {
            since: Some("2026-01-02T10:00:02.5Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(collect(&path, options).await.unwrap(), "b\nc1c2\nd\n");
        // A joined line is kept or dropped whole, by the time of its first record.
        let options = ReadOptions {
            since: Some("2026-01-02T10:00:03.5Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(collect(&path, options).await.unwrap(), "d\n");
        // tail applies first, then since (as kubelet does).
        let options = ReadOptions {
            tail_lines: Some(3),
            since: Some("2026-01-02T10:00:01Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(collect(&path, options).await.unwrap(), "b\nc1c2\nd\n");
    }

    #[tokio::test]
    async fn read_limit_bytes_truncates() {
        let (_dir, path) = sample_file().await;
        for (limit, want) in [
            (0, ""),
            (3, "a\nb"),
            (7, "a\nb\nc1c"),
            (100, "a\nb\nc1c2\nd\n"),
        ] {
            let options = ReadOptions {
                limit_bytes: Some(limit),
                ..Default::default()
            };
            assert_eq!(
                collect(&path, options).await.unwrap(),
                want,
                "limit {limit}"
            );
        }
        let options = ReadOptions {
            limit_bytes: Some(25),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            collect(&path, options).await.unwrap(),
            "2026-01-02T10:00:01Z a\n20"
        );
    }

    #[tokio::test]
    async fn read_a_missing_file_is_an_error_item() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.log");
        let mut stream = read(path, ReadOptions::default(), never());
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nope.log"), "{err}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn read_large_file_spanning_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = Vec::new();
        let mut want = String::new();
        for i in 0..5000 {
            let text = format!("line {i:05} {}", "x".repeat(40));
            f.extend(rec("2026-01-02T10:00:01Z", Stream::Stdout, false, &text));
            want.push_str(&text);
            want.push('\n');
        }
        std::fs::write(&path, &f).unwrap();
        assert!(f.len() > 3 * READ_CHUNK);
        assert_eq!(collect(&path, ReadOptions::default()).await.unwrap(), want);
        let options = ReadOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        let tail = collect(&path, options).await.unwrap();
        assert!(tail.starts_with("line 04998 "), "{tail}");
        assert_eq!(tail.lines().count(), 2);
    }

    #[tokio::test]
    async fn read_follow_sees_appended_lines_and_ends_after_done() {
        use futures::StreamExt as _;
        use std::io::Write as _;
        let (_dir, path) = sample_file().await;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let done: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
            let _ = done_rx.await;
        });
        let options = ReadOptions {
            follow: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        let mut stream = read(path.clone(), options, done);
        let mut seen = String::new();
        let mut next = async |seen: &mut String| {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("a chunk in time")
                .expect("the stream goes on")
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        };
        next(&mut seen).await;
        assert_eq!(seen, "d\n");

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&rec("2026-01-02T10:00:06Z", Stream::Stdout, false, "e"))
            .unwrap();
        next(&mut seen).await;
        assert_eq!(seen, "d\ne\n");

        // A record written in two pieces comes out once it is whole.
        let f = rec("2026-01-02T10:00:07Z", Stream::Stdout, false, "f");
        file.write_all(&f[..10]).unwrap();
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        file.write_all(&f[10..]).unwrap();
        next(&mut seen).await;
        assert_eq!(seen, "d\ne\nf\n");

        // Nothing new: the stream waits (does not end) until done.
        assert!(
            tokio::time::timeout(FOLLOW_POLL * 4, stream.next())
                .await
                .is_err()
        );
        // Written before done: still read (the file is drained), then the stream ends.
        file.write_all(&rec("2026-01-02T10:00:08Z", Stream::Stdout, false, "g"))
            .unwrap();
        done_tx.send(()).unwrap();
        let rest: Vec<_> = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.collect::<Vec<_>>(),
        )
        .await
        .expect("the stream ends after done");
        for chunk in rest {
            seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        assert_eq!(seen, "d\ne\nf\ng\n");
    }

    #[tokio::test]
    async fn read_without_follow_ignores_done() {
        let (_dir, path) = sample_file().await;
        // `never()` as done: a non-follow read must still end.
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            collect(&path, ReadOptions::default()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(out, "a\nb\nc1c2\nd\n");
    }
}
