//! Line numbers of byte offsets in a text with `\n` line endings.

pub struct LineIndex {
    /// The byte offset where each line starts; the first line starts at 0.
    starts: Vec<usize>,
    /// The number of lines as `text.split("\n")` counts them, less a trailing empty one.
    line_count: usize,
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
        Self { starts, line_count }
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

    /// Returns the text of 1-based line `line`, without its `\n`.
    pub fn line<'a>(&self, text: &'a str, line: usize) -> &'a str {
        let start = self.starts[line - 1];
        let end = self.starts.get(line).map_or(text.len(), |&next| next - 1);
        &text[start..end]
    }
}
