//! Conversion of results to Python objects. The keys are interned strings, so that
//! each dict does not allocate its own.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::model::{FileMetrics, FunctionMetrics};

fn function_dict<'py>(py: Python<'py>, function: &FunctionMetrics) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item(intern!(py, "name"), &function.name)?;
    dict.set_item(intern!(py, "qualified_name"), &function.qualified_name)?;
    dict.set_item(intern!(py, "is_method"), function.is_method)?;
    dict.set_item(intern!(py, "line_start"), function.line_start)?;
    dict.set_item(intern!(py, "line_end"), function.line_end)?;
    dict.set_item(
        intern!(py, "cyclomatic_complexity"),
        function.cyclomatic_complexity,
    )?;
    dict.set_item(intern!(py, "max_nesting"), function.max_nesting)?;
    dict.set_item(intern!(py, "length"), function.length)?;
    Ok(dict)
}

/// Converts `file` to a dict with the fields of the reference's `FileMetrics`. Its
/// `functions` is a list of dicts with the fields of `FunctionMetrics`.
pub fn file_dict<'py>(py: Python<'py>, file: &FileMetrics) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item(intern!(py, "path"), &file.path)?;
    dict.set_item(intern!(py, "loc"), file.raw.loc)?;
    dict.set_item(intern!(py, "lloc"), file.raw.lloc)?;
    dict.set_item(intern!(py, "sloc"), file.raw.sloc)?;
    dict.set_item(intern!(py, "comments"), file.raw.comments)?;
    dict.set_item(intern!(py, "multi"), file.raw.multi)?;
    dict.set_item(intern!(py, "blank"), file.raw.blank)?;
    dict.set_item(intern!(py, "single_comments"), file.raw.single_comments)?;
    dict.set_item(
        intern!(py, "maintainability_index"),
        file.maintainability_index,
    )?;
    dict.set_item(intern!(py, "halstead_volume"), file.halstead_volume)?;
    let functions = PyList::empty(py);
    for function in &file.functions {
        functions.append(function_dict(py, function)?)?;
    }
    dict.set_item(intern!(py, "functions"), functions)?;
    dict.set_item(intern!(py, "error"), &file.error)?;
    Ok(dict)
}
