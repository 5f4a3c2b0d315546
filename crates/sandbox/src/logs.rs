//! Container logs in the CRI format the kubelet writes (`<RFC3339 nano time> <stream> <F|P> <text>`),
//! one file per container start, so logs survive restarts and can be followed. The line format is
//! pure; the pump copies a pipe into a file (and optionally to a live reader).

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
}
