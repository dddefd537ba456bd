//! metrics.csv: one row per epoch, as vit writes it and as a resume and `vit plot` read
//! it back.

use super::METRICS_CSV;
use crate::fsutil::kind_if_not_a_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// metrics.csv's column names: `EpochMetrics`'s fields, in order, as the csv crate
/// names them when it writes a row with its header.
pub(crate) fn metrics_header() -> Vec<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .serialize(EpochMetrics::default())
        .expect("a row serializes to memory");
    let text = writer.into_inner().expect("a Vec cannot fail to flush");
    let mut reader = csv::Reader::from_reader(text.as_slice());
    let header = reader.headers().expect("the header just written");
    header.iter().map(String::from).collect()
}

/// One epoch's metrics.csv row; the header is its field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// The whole epoch: its training steps, then its test passes.
    pub epoch_seconds: f64,
    /// The training steps' images over their time alone.
    pub images_per_second: f64,
    /// The weights' moving average on the test set (empty without `--ema`).
    pub ema_test_loss: Option<f64>,
    pub ema_test_acc: Option<f64>,
}

/// The epochs `dir/metrics.csv` holds: its records after the header, counted as a resume
/// reads them (blank lines skipped, any line ending, a last row cut short none); 0 without
/// the file, or where it is no file (a pipe's read would wait for a writer forever).
pub(super) fn metrics_rows(dir: &Path) -> usize {
    let path = dir.join(METRICS_CSV);
    if kind_if_not_a_file(&path).is_some() {
        return 0;
    }
    std::fs::read_to_string(path).map_or(0, |text| metrics_records(&text).records.len())
}

/// The rows of metrics.csv (`text`) that are rows vit writes, in order (any other line,
/// and a last row cut short, left out).
pub(super) fn epoch_rows(text: &str) -> Vec<EpochMetrics> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader.deserialize().filter_map(Result::ok).collect()
}

/// metrics.csv as a resume reads it.
pub(super) struct MetricsText {
    /// Whether it starts with the header vit writes.
    pub(super) header_is_vits: bool,
    /// Each record after the header (blank lines are skipped): where it starts, and its
    /// epoch where it is a row vit writes.
    pub(super) records: Vec<(csv::Position, Option<usize>)>,
    /// Where its records end: at the start of a last row cut short (see [`cut_row_start`]),
    /// which is none of them, or at its end.
    pub(super) end: usize,
}

/// metrics.csv (`text`) read as a resume reads it.
pub(super) fn metrics_records(text: &str) -> MetricsText {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().cloned().unwrap_or_default();
    let header_is_vits = header.iter().eq(metrics_header().iter());
    let mut records: Vec<(csv::Position, Option<usize>)> = reader
        .records()
        .map(|record| match record {
            Ok(record) => (
                record
                    .position()
                    .cloned()
                    .unwrap_or_else(csv::Position::new),
                (record.deserialize::<EpochMetrics>(Some(&header)).ok()).map(|row| row.epoch),
            ),
            Err(e) => (
                e.position().cloned().unwrap_or_else(csv::Position::new),
                None,
            ),
        })
        .collect();
    let mut end = text.len();
    // Only an unreadable last record that is the last line alone (csv puts its position
    // before the line breaks in front of it), after a row vit wrote or the header.
    if let [.., (last, None)] = records.as_slice() {
        let previous_epoch = match records.len() {
            1 => Some(0),
            n => records[n - 2].1,
        };
        let cut_row = previous_epoch.and_then(|epoch| cut_row_start(text, epoch));
        if let Some(start) = cut_row.filter(|&start| {
            text.get(last.byte() as usize..start)
                .is_some_and(|gap| gap.bytes().all(|b| b == b'\n' || b == b'\r'))
        }) {
            records.pop();
            end = start;
        }
    }
    MetricsText {
        header_is_vits,
        records,
        end,
    }
}

/// Where the last line of metrics.csv (`text`) starts when it is a row cut short: the
/// start of the one vit writes for the epoch after `previous_epoch`, without a line end
/// (left by a write a full disk cut short, in versions before vit cut those back, or by a
/// power loss). Nothing else is taken for one: its epoch is the next one, whole; the
/// values after it are numbers, the last possibly cut short; it has fewer values than a
/// row. A resume drops it, as a later epoch's row, and trains that epoch again.
fn cut_row_start(text: &str, previous_epoch: usize) -> Option<usize> {
    if text.ends_with(['\n', '\r']) {
        return None;
    }
    // The header's line is no row.
    let start = text.rfind(['\n', '\r'])? + 1;
    let values: Vec<&str> = text[start..].split(',').collect();
    let (cut, whole) = values.split_last()?;
    let number_part =
        |value: &str| (value.bytes()).all(|b| b.is_ascii_digit() || b".eE+-".contains(&b));
    let is_cut_row = values.len() < metrics_header().len()
        && values[0] == (previous_epoch + 1).to_string()
        && whole.iter().all(|value| value.parse::<f64>().is_ok())
        && number_part(cut);
    is_cut_row.then_some(start)
}

/// How the first line of the file at `path` ends, for the rows appended after it: a file
/// a spreadsheet saved with CRLF (or CR) line ends keeps them. LF, as vit writes it, where
/// the line has no end or cannot be read (the append says why).
pub(super) fn header_line_end(path: &Path) -> csv::Terminator {
    let mut start = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| {
        use std::io::Read;
        file.take(64 * 1024).read_to_end(&mut start)
    });
    let end = start
        .iter()
        .position(|&byte| byte == b'\n' || byte == b'\r');
    match (read, end.map(|at| &start[at..])) {
        (Ok(_), Some([b'\r', b'\n', ..])) => csv::Terminator::CRLF,
        (Ok(_), Some([b'\r', ..])) => csv::Terminator::Any(b'\r'),
        _ => csv::Terminator::Any(b'\n'),
    }
}

/// The line (from 1, as an editor numbers it) of the record of csv `text` at `position`:
/// csv puts a record where the one before it ended, before the line breaks (and blank
/// lines) that precede it, and its own line count does not see CR-only or CRLF endings as
/// one break each.
pub(crate) fn line_at(text: &[u8], position: &csv::Position) -> usize {
    let (bytes, byte) = (text, position.byte() as usize);
    let start = byte
        + bytes[byte.min(bytes.len())..]
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
    // A line ends at \n, or at a \r that no \n follows.
    let ends = bytes[..start]
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    1 + ends
}

#[cfg(test)]
mod tests {
    use super::{line_at, metrics_header, metrics_rows, METRICS_CSV};
    use crate::temp_dir::TempDir;

    /// metrics.csv's epochs are counted as a resume reads its rows: a blank line after the
    /// header (which made a folder with no results neither fresh nor resumable) or between
    /// rows is none, and CR-only line ends end rows too.
    #[test]
    fn metrics_rows_are_its_records_after_the_header() {
        let dir = TempDir::new("metrics-rows");
        let header = metrics_header().join(",");
        let row = |epoch: usize| format!("{epoch}{}", ",1".repeat(metrics_header().len() - 1));
        for (text, rows) in [
            (format!("{header}\n"), 0),
            (format!("{header}\n\n"), 0),
            (format!("{header}\n{}\n\n{}\n", row(1), row(2)), 2),
            (format!("{header}\r{}\r{}\r", row(1), row(2)), 2),
        ] {
            std::fs::write(dir.join(METRICS_CSV), &text).unwrap();
            assert_eq!(metrics_rows(&dir), rows, "{text:?}");
        }
        assert_eq!(metrics_rows(&dir.join("nonexistent")), 0);
    }

    /// A record is named by its line as an editor numbers it, whatever ends the lines and
    /// however many blank ones come before it (csv's position is where the record before
    /// it ended).
    #[test]
    fn line_at_numbers_lines_as_an_editor_does() {
        for (text, line) in [
            ("h\r\nr1\r\nr2\r\n# a note\r\n", 4),
            ("h\nr1\nr2\n\n\n# a note\n", 6),
            ("h\rr1\rr2\r# a note\r", 4),
        ] {
            let mut position = csv::Position::new();
            position.set_byte((text.find("r2").unwrap() + 2) as u64);
            assert_eq!(line_at(text.as_bytes(), &position), line, "{text:?}");
        }
    }
}
