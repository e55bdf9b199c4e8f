-- Projects, members, uploaded archives and analysis runs.
CREATE TABLE projects (
    project_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    owner_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE members (
    project_id uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    role text NOT NULL CHECK (role IN ('viewer', 'maintainer')),
    PRIMARY KEY (project_id, user_id)
);

CREATE INDEX members_user_id ON members (user_id);

CREATE TABLE archives (
    archive_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    filename text NOT NULL,
    format text NOT NULL CHECK (format IN ('tar.gz', 'zip')),
    compressed_bytes bigint NOT NULL,
    expanded_bytes bigint NOT NULL,
    file_count integer NOT NULL,
    sha256 text NOT NULL,
    storage_path text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    run_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    archive_id uuid NOT NULL REFERENCES archives (archive_id),
    state text NOT NULL CHECK (state IN ('pending', 'queued', 'running', 'completed', 'failed')),
    files_total integer NOT NULL DEFAULT 0,
    files_done integer NOT NULL DEFAULT 0,
    error text NOT NULL DEFAULT '',
    requested_by uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX runs_project_id ON runs (project_id, created_at);
CREATE INDEX runs_pending ON runs (state) WHERE state = 'pending';
