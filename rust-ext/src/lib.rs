//! `aiswa_core`: AI-SWA's native code metrics and duplicate detection.
//!
//! The Python surface is the three functions below. The metrics follow the pure
//! Python reference `aiswa_reflector.metrics` (radon 6.0.1's definitions), and the
//! duplicate detector follows `aiswa_reflector.duplicates`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod batch;
mod convert;
pub mod duplicates;
pub mod formulas;
pub mod languages;
pub mod model;

use std::panic::{AssertUnwindSafe, catch_unwind};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

pub use crate::batch::{InputFile, analyze_one};
pub use crate::duplicates::{Duplicate, find_duplicates as find_token_duplicates};
pub use crate::languages::{Language, NormalizedToken, Source};
pub use crate::model::{FileMetrics, FunctionMetrics, RawCounts};

/// Compute the metrics of one Python file.
///
/// `source` is the file's bytes, decoded as the interpreter does (byte order mark,
/// PEP 263 coding cookie, else UTF-8), or text that is already decoded. Returns a
/// dict with the fields of `FileMetrics`. Any failure is reported in its `error`.
#[pyfunction(signature = (path, source))]
fn analyze_source<'py>(
    py: Python<'py>,
    path: String,
    source: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let metrics = if let Ok(bytes) = source.cast::<PyBytes>() {
        let content = bytes.as_bytes().to_vec();
        run_detached(py, move || analyze_one(&path, Source::Bytes(&content)))?
    } else if let Ok(text) = source.cast::<PyString>() {
        match text.to_str() {
            Ok(text) => {
                let text = text.to_owned();
                run_detached(py, move || analyze_one(&path, Source::Text(&text)))?
            }
            Err(_) => {
                // Only an unpaired surrogate makes a str unencodable as UTF-8.
                let encoded = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
                let encoded = encoded.cast::<PyBytes>()?;
                FileMetrics::failed(
                    &path,
                    languages::python::unencodable_text_error(encoded.as_bytes()),
                )
            }
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "source must be bytes or str, not {}",
            source.get_type().name()?
        )));
    };
    Ok(convert::file_dict(py, &metrics)?.into_any())
}

/// Compute the metrics of many files in parallel, without holding the GIL.
///
/// `files` is a list of `(path, content)` pairs, and the results come back in the
/// same order. `threads` is the number of worker threads, 0 for one per logical CPU.
#[pyfunction(signature = (files, *, threads = 0))]
fn analyze_files<'py>(
    py: Python<'py>,
    files: Vec<(String, Vec<u8>)>,
    threads: usize,
) -> PyResult<Bound<'py, PyList>> {
    let pool = batch::pool(threads).map_err(PyRuntimeError::new_err)?;
    let results = py.detach(|| batch::analyze_many(&pool, &files));
    let list = PyList::empty(py);
    for metrics in &results {
        list.append(convert::file_dict(py, metrics)?)?;
    }
    Ok(list)
}

/// The largest file, in bytes, and the most files that `find_duplicates` accepts.
const MAX_DUPLICATE_INPUT: usize = u32::MAX as usize;

/// Find duplicated code: token sequences of at least `min_tokens` tokens that
/// occur twice, with identifiers and literals normalized.
///
/// Returns `(path_a, line_start_a, line_end_a, path_b, line_start_b, line_end_b,
/// tokens)` tuples, where file `a` is the earlier copy in input order, ordered by
/// where the later copy starts. Files that do not decode or tokenize are skipped.
#[pyfunction(signature = (files, *, min_tokens = 50))]
fn find_duplicates<'py>(
    py: Python<'py>,
    files: Vec<(String, Vec<u8>)>,
    min_tokens: usize,
) -> PyResult<Bound<'py, PyList>> {
    if min_tokens < 1 {
        return Err(PyValueError::new_err(format!(
            "min_tokens must be at least 1, got {min_tokens}"
        )));
    }
    // The matcher stores file indexes and token positions as u32. A file has no more
    // tokens than bytes, so bounding the sizes bounds the positions.
    if files.len() > MAX_DUPLICATE_INPUT {
        return Err(PyValueError::new_err(format!(
            "find_duplicates accepts at most {MAX_DUPLICATE_INPUT} files, got {}",
            files.len()
        )));
    }
    if let Some((path, content)) = files
        .iter()
        .find(|(_, content)| content.len() > MAX_DUPLICATE_INPUT)
    {
        return Err(PyValueError::new_err(format!(
            "{path} has {} bytes, more than the {MAX_DUPLICATE_INPUT} that find_duplicates accepts",
            content.len()
        )));
    }
    let pool = batch::pool(0).map_err(PyRuntimeError::new_err)?;
    let found = py
        .detach(|| {
            let tokens = batch::tokenize_many(&pool, &files);
            catch_unwind(AssertUnwindSafe(|| {
                find_token_duplicates(&tokens, min_tokens)
            }))
        })
        .map_err(|_| {
            PyRuntimeError::new_err(
                "internal error in aiswa_core (please report): duplicate matching failed",
            )
        })?;
    let list = PyList::empty(py);
    for duplicate in found {
        list.append((
            &files[duplicate.file_a].0,
            duplicate.line_start_a,
            duplicate.line_end_a,
            &files[duplicate.file_b].0,
            duplicate.line_start_b,
            duplicate.line_end_b,
            duplicate.tokens,
        ))?;
    }
    Ok(list)
}

/// Run `work` on a worker thread of the shared pool (for its larger stack) with the
/// GIL released, so that calls from several Python threads run in parallel.
fn run_detached<T: Send>(py: Python<'_>, work: impl FnOnce() -> T + Send) -> PyResult<T> {
    let pool = batch::pool(0).map_err(PyRuntimeError::new_err)?;
    Ok(py.detach(|| pool.install(work)))
}

#[pymodule]
fn aiswa_core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(analyze_source, module)?)?;
    module.add_function(wrap_pyfunction!(analyze_files, module)?)?;
    module.add_function(wrap_pyfunction!(find_duplicates, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
