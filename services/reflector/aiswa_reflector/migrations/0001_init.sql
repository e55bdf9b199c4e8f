-- Reports of completed analysis runs: one row per run, file and function.
CREATE TABLE reports (
    run_id uuid PRIMARY KEY,
    project_id uuid NOT NULL,
    engine text NOT NULL,
    summary jsonb NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE files (
    run_id uuid NOT NULL REFERENCES reports (run_id) ON DELETE CASCADE,
    path text NOT NULL,
    loc integer NOT NULL,
    lloc integer NOT NULL,
    sloc integer NOT NULL,
    comments integer NOT NULL,
    multi integer NOT NULL,
    blank integer NOT NULL,
    single_comments integer NOT NULL,
    maintainability_index double precision NOT NULL,
    halstead_volume double precision NOT NULL,
    error text NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, path)
);

CREATE TABLE functions (
    run_id uuid NOT NULL REFERENCES reports (run_id) ON DELETE CASCADE,
    path text NOT NULL,
    qualified_name text NOT NULL,
    name text NOT NULL,
    is_method boolean NOT NULL,
    line_start integer NOT NULL,
    line_end integer NOT NULL,
    cyclomatic_complexity integer NOT NULL,
    max_nesting integer NOT NULL,
    length integer NOT NULL
);

CREATE INDEX functions_run_id ON functions (run_id, path, line_start);
