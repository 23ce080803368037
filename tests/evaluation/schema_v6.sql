-- The DDL of results schema version 6, verbatim as rnd wrote it (rnd.evaluation.store.schema.SCHEMA
-- at schema 6); the migration tests build an old database from it.
CREATE TABLE schema_info (name TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    rnd_version TEXT NOT NULL,
    happened_at TEXT NOT NULL
);

CREATE TABLE sweeps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    quick INTEGER NOT NULL,
    config TEXT NOT NULL,
    config_path TEXT,
    rnd_version TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (config_sha256, quick)
);
CREATE TABLE cells (
    key TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    model TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    images INTEGER NOT NULL,
    start INTEGER NOT NULL,
    attack TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    mu REAL,
    eot INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    nu REAL NOT NULL,
    seed INTEGER NOT NULL,
    output TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    error TEXT,
    updated_at TEXT NOT NULL,
    claimed_by TEXT,
    claimed_at TEXT,
    defense TEXT NOT NULL,
    target TEXT,
    url TEXT,
    assume TEXT
);
CREATE TABLE sweep_cells (
    sweep_id INTEGER NOT NULL REFERENCES sweeps(id),
    cell_key TEXT NOT NULL REFERENCES cells(key),
    PRIMARY KEY (sweep_id, cell_key)
);

CREATE TABLE image_results (
    cell_key TEXT NOT NULL REFERENCES cells(key),
    position INTEGER NOT NULL,
    image_index INTEGER NOT NULL,
    label INTEGER NOT NULL,
    success INTEGER NOT NULL,
    queries INTEGER NOT NULL,
    success_clean INTEGER,
    success_vote INTEGER NOT NULL,
    distance REAL,
    first_refusal INTEGER,
    target INTEGER,
    PRIMARY KEY (cell_key, position)
);

CREATE TABLE cell_summaries (
    cell_key TEXT PRIMARY KEY REFERENCES cells(key),
    images INTEGER NOT NULL,
    failure_rate REAL NOT NULL,
    failure_rate_clean REAL,
    failure_rate_vote REAL NOT NULL,
    mean_queries REAL,
    median_queries REAL,
    clean_accuracy REAL,
    model_accuracy REAL,
    indices TEXT NOT NULL,
    attack_params TEXT NOT NULL,
    rnd_version TEXT NOT NULL,
    wall_seconds REAL NOT NULL,
    finished_at TEXT NOT NULL,
    median_distance REAL,
    distance_curve TEXT,
    detection_rate REAL,
    median_first_refusal REAL
);

CREATE TABLE calibrations (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    result TEXT NOT NULL,
    rnd_version TEXT NOT NULL,
    created_at TEXT NOT NULL
);
