//! Splits a file's bytes into records without ever holding more than `max_record_bytes` of one:
//! lines for JSON, RFC 4180 records for CSV (a quoted field may hold newlines).
//!
//! A record longer than the limit keeps its first `max_record_bytes` bytes and becomes a dead
//! letter; the rest of it is counted and skipped, so a gigabyte line (a truncated upload, a binary
//! file, a gzip bomb) costs no more memory than a normal one. A CSV quote that nothing closes within
//! the limit (a stray `"`) would swallow the rest of the file: its first line becomes a dead letter
//! instead and reading goes on at the line after it.

use std::io::{self, BufRead};

use memchr::{memchr, memchr2};

/// In the reason of a record cut at the limit: `weir replay` leaves such dead letters alone,
/// since only their first bytes were kept.
pub const CUT: &str = "cut at the limit";

/// How records are framed in a file.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    /// The field delimiter for CSV; `None` for JSON lines.
    pub csv: Option<u8>,
    /// CSV only: the first line is a header and is skipped.
    pub header: bool,
    /// The longest record kept whole (`input.max_record_bytes`).
    pub max_record_bytes: usize,
}

/// One record appended to the caller's buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Record {
    /// Lines it spans (more than one for a CSV record with quoted newlines).
    pub lines: u64,
    /// Its whole length in bytes, without the line end, even when only a prefix was kept.
    pub len: u64,
    /// Why it is a dead letter, when the framing already tells.
    pub problem: Option<String>,
}

/// Where a CSV scan stands between buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Csv {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the field's end, or the first half of `""`.
    QuoteInQuoted,
}

/// Finds the newline that ends the CSV record in `buf`, continuing from `state`; counts the
/// newlines inside quoted fields into `inner`.
fn scan_csv(buf: &[u8], delimiter: u8, state: &mut Csv, inner: &mut u64) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match *state {
            Csv::FieldStart | Csv::Unquoted => {
                let Some(j) = memchr2(b'"', b'\n', &buf[i..]) else {
                    *state = if buf[buf.len() - 1] == delimiter {
                        Csv::FieldStart
                    } else {
                        Csv::Unquoted
                    };
                    return None;
                };
                let p = i + j;
                if buf[p] == b'\n' {
                    return Some(p);
                }
                // A quote opens a quoted field only at the field's start; elsewhere it is text.
                let at_start = if p > i {
                    buf[p - 1] == delimiter
                } else {
                    *state == Csv::FieldStart
                };
                *state = if at_start { Csv::Quoted } else { Csv::Unquoted };
                i = p + 1;
            }
            Csv::Quoted => match memchr2(b'"', b'\n', &buf[i..]) {
                None => return None,
                Some(j) => {
                    if buf[i + j] == b'\n' {
                        *inner += 1;
                    } else {
                        *state = Csv::QuoteInQuoted;
                    }
                    i += j + 1;
                }
            },
            Csv::QuoteInQuoted => {
                *state = match buf[i] {
                    b'"' => Csv::Quoted,
                    b'\n' => return Some(i),
                    b if b == delimiter => Csv::FieldStart,
                    _ => Csv::Unquoted,
                };
                i += 1;
            }
        }
    }
    None
}

/// Reads records from a buffered byte stream.
pub(super) struct Records<R> {
    inner: R,
    framing: Framing,
    /// Bytes to read again before `inner`: what followed the first line of an unclosed quote.
    again: Vec<u8>,
    again_at: usize,
}

impl<R: BufRead> Records<R> {
    pub fn new(inner: R, framing: Framing) -> Self {
        Self {
            inner,
            framing,
            again: Vec::new(),
            again_at: 0,
        }
    }

    fn fill(&mut self) -> io::Result<&[u8]> {
        if self.again_at < self.again.len() {
            Ok(&self.again[self.again_at..])
        } else {
            self.inner.fill_buf()
        }
    }

    fn consume(&mut self, n: usize) {
        if self.again_at < self.again.len() {
            self.again_at += n;
            if self.again_at == self.again.len() {
                self.again = Vec::new();
                self.again_at = 0;
            }
        } else {
            self.inner.consume(n);
        }
    }

    /// Appends the next record (at most `max_record_bytes` of it, without its line end) to `out`;
    /// `None` at the end of the input.
    pub fn next(&mut self, out: &mut Vec<u8>) -> io::Result<Option<Record>> {
        let max = self.framing.max_record_bytes;
        let start = out.len();
        let mut len = 0u64;
        let mut inner = 0u64;
        let mut state = Csv::FieldStart;
        // Once a record is over the limit, only its end is looked for, line by line.
        let mut csv = self.framing.csv;
        let ended = loop {
            // Up to one byte over the limit is kept, to tell "at the limit" from "over it".
            let room = (max + 1).saturating_sub(out.len() - start);
            let buf = self.fill()?;
            if buf.is_empty() {
                break false;
            }
            let (end, scanned) = match csv {
                None => (memchr(b'\n', buf), buf.len()),
                // A CSV scan never passes what is kept: an unclosed quote is read again from its
                // first line end.
                Some(d) => {
                    let scanned = buf.len().min(room);
                    (
                        scan_csv(&buf[..scanned], d, &mut state, &mut inner),
                        scanned,
                    )
                }
            };
            let take = end.unwrap_or(scanned);
            out.extend_from_slice(&buf[..take.min(room)]);
            len += take as u64;
            self.consume(end.map_or(take, |e| e + 1));
            if end.is_some() {
                break true;
            }
            if csv.is_some() && out.len() - start > max {
                if state == Csv::Quoted
                    && let Some(record) = self.unclosed_quote(out, start)
                {
                    return Ok(Some(record));
                }
                // Over the limit with no quote open: the next line end ends the record.
                csv = None;
            }
        };
        if !ended && len == 0 && inner == 0 {
            return Ok(None);
        }
        if !ended && csv.is_some() && state == Csv::Quoted {
            if let Some(record) = self.unclosed_quote(out, start) {
                return Ok(Some(record));
            }
            if len <= max as u64 {
                return Ok(Some(Record {
                    lines: 1,
                    len,
                    problem: Some(
                        "a quoted field opened on this line is not closed before the end of the \
                         file; close the quote or double it (\"\") inside the field"
                            .into(),
                    ),
                }));
            }
        }
        // A CRLF line end's `\r` is not part of the record (the caller drops it).
        let whole = (out.len() - start) as u64 == len;
        if ended && whole && out.last() == Some(&b'\r') {
            len -= 1;
        }
        let problem = (len > max as u64).then(|| {
            out.truncate(start + max);
            format!(
                "record is {len} bytes, over the limit of {max} (input.max_record_bytes); \
                 its first {max} bytes are kept ({CUT})"
            )
        });
        Ok(Some(Record {
            lines: inner + 1,
            len,
            problem,
        }))
    }

    /// A quoted field that no quote closes: the record's first line becomes a dead letter and
    /// what followed it is read again. `None` when that first line is itself over the limit.
    fn unclosed_quote(&mut self, out: &mut Vec<u8>, start: usize) -> Option<Record> {
        let nl = memchr(b'\n', &out[start..])?;
        let mut again = out.split_off(start + nl + 1);
        again.extend_from_slice(&self.again[self.again_at..]);
        self.again = again;
        self.again_at = 0;
        out.truncate(start + nl);
        Some(Record {
            lines: 1,
            len: nl as u64,
            problem: Some(format!(
                "a quoted field opened on this line is not closed within {} bytes \
                 (input.max_record_bytes); close the quote or double it (\"\") inside the field",
                self.framing.max_record_bytes
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &[u8], csv: bool, max: usize, buf: usize) -> Vec<(String, u64, u64, bool)> {
        let framing = Framing {
            csv: csv.then_some(b','),
            header: false,
            max_record_bytes: max,
        };
        let mut records = Records::new(io::BufReader::with_capacity(buf, input), framing);
        let mut out = Vec::new();
        let mut all = Vec::new();
        while let Some(r) = records.next(&mut out).unwrap() {
            all.push((
                String::from_utf8(std::mem::take(&mut out)).unwrap(),
                r.lines,
                r.len,
                r.problem.is_some(),
            ));
        }
        all
    }

    fn rec(s: &str, lines: u64, len: u64, bad: bool) -> (String, u64, u64, bool) {
        (s.to_string(), lines, len, bad)
    }

    #[test]
    fn json_lines_keep_at_most_the_limit_of_a_long_line() {
        for buf in [1, 3, 64] {
            let got = split(b"{\"a\":1}\n0123456789abc\n\n{}", false, 8, buf);
            assert_eq!(
                got,
                [
                    rec("{\"a\":1}", 1, 7, false),
                    rec("01234567", 1, 13, true),
                    rec("", 1, 0, false),
                    rec("{}", 1, 2, false),
                ],
                "buffer {buf}"
            );
        }
    }

    #[test]
    fn a_crlf_line_end_does_not_count_against_the_limit() {
        for csv in [false, true] {
            assert_eq!(
                split(b"abcd\r\nabcde\r\n", csv, 4, 2),
                [rec("abcd\r", 1, 4, false), rec("abcd", 1, 6, true)],
                "csv {csv}"
            );
        }
    }

    #[test]
    fn csv_quoted_newlines_stay_in_one_record() {
        let input = b"1,\"two\nlines\",x\n2,\"a \"\"quoted\"\"\nb\",y\n3,mid\"quote,z\n";
        for buf in [1, 2, 5, 1024] {
            assert_eq!(
                split(input, true, 100, buf),
                [
                    rec("1,\"two\nlines\",x", 2, 15, false),
                    rec("2,\"a \"\"quoted\"\"\nb\",y", 2, 20, false),
                    rec("3,mid\"quote,z", 1, 13, false),
                ],
                "buffer {buf}"
            );
        }
    }

    #[test]
    fn an_unclosed_csv_quote_costs_one_line_only() {
        let input = b"1,\"open,x\n2,b,y\n3,c,z\n";
        for buf in [1, 4, 1024] {
            let got = split(input, true, 12, buf);
            assert_eq!(
                got,
                [
                    rec("1,\"open,x", 1, 9, true),
                    rec("2,b,y", 1, 5, false),
                    rec("3,c,z", 1, 5, false),
                ],
                "buffer {buf}"
            );
        }
        // At the end of the file without a line end: its only line.
        assert_eq!(
            split(b"1,\"open", true, 100, 3),
            [rec("1,\"open", 1, 7, true)]
        );
        // At the end of the file, within the limit: the same.
        assert_eq!(
            split(b"1,\"open\n2,b", true, 100, 7),
            [rec("1,\"open", 1, 7, true), rec("2,b", 1, 3, false)]
        );
        // An unquoted record over the limit ends at its line end.
        assert_eq!(
            split(b"1,0123456789\n2,b\n", true, 4, 3),
            [rec("1,01", 1, 12, true), rec("2,b", 1, 3, false)]
        );
        // A first line itself over the limit: an over-long record up to its line end.
        assert_eq!(
            split(b"1,\"0123456789\n2,b\n", true, 4, 3),
            [rec("1,\"0", 1, 13, true), rec("2,b", 1, 3, false)]
        );
    }
}
