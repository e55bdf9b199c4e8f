//! Language-independent formulas of radon 6.0.1 (`radon.metrics`).

/// Halstead volume: (N1 + N2) * log2(n1 + n2), or 0 with an empty vocabulary.
pub fn halstead_volume(total_operators: u64, total_operands: u64, vocabulary: u64) -> f64 {
    if vocabulary == 0 {
        return 0.0;
    }
    // Python's math.log(x, 2) divides natural logarithms; so does this, to round alike.
    (total_operators + total_operands) as f64 * ((vocabulary as f64).ln() / 2f64.ln())
}

/// Maintainability index on a 0-100 scale, as `radon.metrics.mi_visit(code, multi=True)`.
///
/// MI = 100 / 171 * (171 - 5.2 ln V - 0.23 G - 16.2 ln L + 50 sin(sqrt(2.46 r))),
/// clamped to [0, 100], where V is the Halstead volume, G the file's total cyclomatic
/// complexity, L the logical line count (radon passes LLOC where the published
/// formula has SLOC) and r the percentage of comment lines among SLOC, taken as
/// degrees. A file without Halstead volume or without logical lines scores 100.
pub fn maintainability_index(
    halstead_volume: f64,
    total_complexity: u32,
    lloc: u32,
    sloc: u32,
    comment_lines: u32,
) -> f64 {
    if halstead_volume <= 0.0 || lloc == 0 {
        return 100.0;
    }
    let percent_comments = if sloc == 0 {
        0.0
    } else {
        f64::from(comment_lines) / f64::from(sloc) * 100.0
    };
    let comments_scale = (2.46 * percent_comments.to_radians()).sqrt();
    let unscaled = 171.0
        - 5.2 * halstead_volume.ln()
        - 0.23 * f64::from(total_complexity)
        - 16.2 * f64::from(lloc).ln()
        + 50.0 * comments_scale.sin();
    (unscaled * 100.0 / 171.0).clamp(0.0, 100.0)
}
