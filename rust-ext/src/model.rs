//! The results of analysing one file, with the fields of the Python reference's
//! `FileMetrics` and `FunctionMetrics` dataclasses.

#[derive(Clone, Debug, PartialEq)]
pub struct FunctionMetrics {
    pub name: String,
    pub qualified_name: String,
    pub is_method: bool,
    pub line_start: u32,
    pub line_end: u32,
    pub cyclomatic_complexity: u32,
    pub max_nesting: u32,
    pub length: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawCounts {
    pub loc: u32,
    pub lloc: u32,
    pub sloc: u32,
    pub comments: u32,
    pub multi: u32,
    pub blank: u32,
    pub single_comments: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileMetrics {
    pub path: String,
    pub raw: RawCounts,
    pub maintainability_index: f64,
    pub halstead_volume: f64,
    pub functions: Vec<FunctionMetrics>,
    /// Empty unless the file could not be analysed. The counts are then 0 and
    /// `functions` is empty.
    pub error: String,
}

impl FileMetrics {
    pub fn failed(path: &str, error: String) -> Self {
        Self {
            path: path.to_owned(),
            raw: RawCounts::default(),
            maintainability_index: 0.0,
            halstead_volume: 0.0,
            functions: Vec::new(),
            error,
        }
    }
}
