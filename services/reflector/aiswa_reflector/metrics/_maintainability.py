from __future__ import annotations

import math


def maintainability_index(
    halstead_volume: float,
    total_complexity: int,
    lloc: int,
    sloc: int,
    comment_lines: int,
) -> float:
    """Compute the maintainability index on a 0-100 scale as radon.metrics.mi_visit does.

    MI = 100 / 171 * (171 - 5.2 ln V - 0.23 G - 16.2 ln L + 50 sin(sqrt(2.46 r))),
    clamped to [0, 100]. V is the Halstead volume, G the file's total cyclomatic
    complexity and L the logical line count. r is the percentage of comment lines
    (comments plus multi-line string lines) among source lines, converted as if it
    were degrees to radians. radon 6.0.1 passes LLOC where the published formula
    uses SLOC, and so does this function. A file without Halstead volume or without
    logical lines scores 100.
    """
    percent_comments = comment_lines / float(sloc) * 100 if sloc != 0 else 0
    if halstead_volume <= 0 or lloc <= 0:
        return 100.0
    comments_scale = math.sqrt(2.46 * math.radians(percent_comments))
    unscaled = (
        171
        - 5.2 * math.log(halstead_volume)
        - 0.23 * total_complexity
        - 16.2 * math.log(lloc)
        + 50 * math.sin(comments_scale)
    )
    return min(max(0.0, unscaled * 100 / 171.0), 100.0)
