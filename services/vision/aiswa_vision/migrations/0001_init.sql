-- Roadmaps: the ranked improvement items of each analysed run.
CREATE TABLE roadmaps (
    run_id uuid PRIMARY KEY,
    project_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX roadmaps_project_id ON roadmaps (project_id, created_at);

CREATE TABLE roadmap_items (
    run_id uuid NOT NULL REFERENCES roadmaps (run_id) ON DELETE CASCADE,
    rank integer NOT NULL,
    target_kind text NOT NULL CHECK (target_kind IN ('file', 'function')),
    path text NOT NULL,
    qualified_name text NOT NULL DEFAULT '',
    line integer NOT NULL DEFAULT 0,
    problem text NOT NULL,
    metric text NOT NULL,
    value double precision NOT NULL,
    threshold double precision NOT NULL,
    business_value double precision NOT NULL,
    time_criticality double precision NOT NULL,
    risk_reduction double precision NOT NULL,
    job_size double precision NOT NULL,
    wsjf double precision NOT NULL,
    PRIMARY KEY (run_id, rank)
);
