//! Line numbers of byte offsets in a text with `\n` line endings.

use super::chars::is_blank;

pub struct LineIndex {
    /// The byte offset where each line starts; the first line starts at 0.
    starts: Vec<usize>,
    /// The number of lines as `text.split("\n")` counts them, less a trailing empty one.
    line_count: usize,
    /// `blank_before[n]` is the number of blank lines (`line.strip() == ""`) among
    /// the first `n` lines.
    blank_before: Vec<u32>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|index| index + 1));
        let line_count = if text.is_empty() || text.ends_with('\n') {
            starts.len() - 1
        } else {
            starts.len()
        };
        let mut blank_before = Vec::with_capacity(line_count + 1);
        blank_before.push(0);
        let mut blank = 0;
        for line in 1..=line_count {
            let start = starts[line - 1];
            let end = starts.get(line).map_or(text.len(), |&next| next - 1);
            blank += u32::from(is_blank(&text[start..end]));
            blank_before.push(blank);
        }
        Self {
            starts,
            line_count,
            blank_before,
        }
    }

    /// Returns the number of blank lines among lines `first` to `last` (1-based,
    /// inclusive; empty when `last < first`).
    pub fn blank_lines(&self, first: usize, last: usize) -> u32 {
        if last < first {
            return 0;
        }
        self.blank_before[last] - self.blank_before[first - 1]
    }

    pub fn line_count(&self) -> usize {
        self.line_count
    }

    /// Returns the 1-based line that contains `offset`.
    pub fn line_of(&self, offset: usize) -> u32 {
        self.starts.partition_point(|&start| start <= offset) as u32
    }

    /// Returns the byte offset of `offset` from the start of its line.
    pub fn column_of(&self, offset: usize) -> usize {
        offset - self.starts[self.line_of(offset) as usize - 1]
    }
}
