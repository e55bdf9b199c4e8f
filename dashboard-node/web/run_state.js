'use strict';
// The rule that decides whether a run_progress update may replace the one
// shown for its run, shared by the hub's snapshot and the page. A run's events
// come from two publishers. Projects publishes run.queued only after the broker
// confirmed the task, so the reflector's run.started, run.progress and even
// analysis.completed of a small archive can reach the dashboard before it.
// The rule matches the one services/projects/aiswa_projects/_runs.py applies
// to its runs table. A state never moves back, the first completed or failed
// is final, and files_done never decreases while the run is running.

const RUN_STATE_RANK = {
  RUN_STATE_QUEUED: 1,
  RUN_STATE_RUNNING: 2,
  RUN_STATE_COMPLETED: 3,
  RUN_STATE_FAILED: 3,
};
const FINAL_RANK = 3;

function rank(run) {
  return RUN_STATE_RANK[run.state] || 0;
}

/** Return true when `next` would move the run that `current` shows backwards, so `next` must not replace it. */
function isStaleRunUpdate(current, next) {
  if (!current) return false;
  if (rank(current) === FINAL_RANK) return true;
  if (rank(next) !== rank(current)) return rank(next) < rank(current);
  return next.files_done < current.files_done;
}

module.exports = { isStaleRunUpdate };
