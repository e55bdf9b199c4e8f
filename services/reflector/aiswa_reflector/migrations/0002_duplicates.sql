-- Duplicated code found in a run: one row per pair of token ranges.
CREATE TABLE duplicates (
    run_id uuid NOT NULL REFERENCES reports (run_id) ON DELETE CASCADE,
    path_a text NOT NULL,
    line_start_a integer NOT NULL,
    line_end_a integer NOT NULL,
    path_b text NOT NULL,
    line_start_b integer NOT NULL,
    line_end_b integer NOT NULL,
    tokens integer NOT NULL
);

CREATE INDEX duplicates_run_id ON duplicates (run_id);
