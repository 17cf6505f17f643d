// Numbered migrations; `PRAGMA user_version` records the last one applied. Never edit a shipped
// migration: add the next number.

const now = `(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))`;

export const MIGRATIONS: { version: number; sql: string }[] = [
  {
    version: 10,
    sql: `
      CREATE TABLE datasets (
        id         INTEGER PRIMARY KEY,
        root       TEXT NOT NULL UNIQUE,
        name       TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT ${now},
        indexed_at TEXT
      ) STRICT;

      CREATE TABLE images (
        id         INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        path       TEXT NOT NULL,
        size       INTEGER NOT NULL,
        mtime_ms   REAL NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('ok', 'rejected')),
        format     TEXT,
        width      INTEGER,
        height     INTEGER,
        hash       TEXT,
        label      TEXT,
        reason     TEXT,
        UNIQUE (dataset_id, path)
      ) STRICT;
      CREATE INDEX images_by_hash ON images (dataset_id, hash);

      CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        dataset_id  INTEGER REFERENCES datasets(id) ON DELETE SET NULL,
        config      TEXT NOT NULL,
        backend     TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('running', 'paused', 'finished', 'failed', 'interrupted')),
        pid         INTEGER,
        error       TEXT,
        notes       TEXT NOT NULL DEFAULT '',
        tags        TEXT NOT NULL DEFAULT '[]',
        step        INTEGER NOT NULL DEFAULT 0,
        epoch       REAL NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL DEFAULT ${now},
        updated_at  TEXT NOT NULL DEFAULT ${now},
        finished_at TEXT
      ) STRICT;

      CREATE TABLE metrics (
        run_id       INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step         INTEGER NOT NULL,
        epoch        REAL NOT NULL,
        samples      INTEGER NOT NULL,
        loss         REAL NOT NULL,
        losses       TEXT NOT NULL,
        lr           REAL NOT NULL,
        images_per_s REAL NOT NULL,
        time         TEXT NOT NULL DEFAULT ${now},
        PRIMARY KEY (run_id, step)
      ) STRICT, WITHOUT ROWID;

      CREATE TABLE checkpoints (
        id         INTEGER PRIMARY KEY,
        run_id     INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step       INTEGER NOT NULL,
        epoch      REAL NOT NULL,
        loss       REAL,
        path       TEXT NOT NULL,
        size       INTEGER NOT NULL,
        hash       TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT ${now},
        UNIQUE (run_id, step)
      ) STRICT;

      CREATE TABLE exports (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        checkpoint_id INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL,
        format        TEXT NOT NULL,
        path          TEXT NOT NULL,
        created_at    TEXT NOT NULL DEFAULT ${now}
      ) STRICT;
    `,
  },
  {
    version: 20,
    sql: `
      ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'pretrain' CHECK (kind IN ('pretrain', 'finetune', 'import'));
      ALTER TABLE runs ADD COLUMN parent_id INTEGER REFERENCES runs(id) ON DELETE SET NULL;
      ALTER TABLE metrics ADD COLUMN val_top1 REAL;
      ALTER TABLE metrics ADD COLUMN val_loss REAL;
    `,
  },
  {
    // 'queued': a run waiting for a free training slot. SQLite cannot alter a CHECK, so the table is rebuilt.
    version: 30,
    sql: `
      CREATE TABLE runs_new (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        dataset_id  INTEGER REFERENCES datasets(id) ON DELETE SET NULL,
        config      TEXT NOT NULL,
        backend     TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'paused', 'finished', 'failed', 'interrupted')),
        pid         INTEGER,
        error       TEXT,
        notes       TEXT NOT NULL DEFAULT '',
        tags        TEXT NOT NULL DEFAULT '[]',
        step        INTEGER NOT NULL DEFAULT 0,
        epoch       REAL NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL DEFAULT ${now},
        updated_at  TEXT NOT NULL DEFAULT ${now},
        finished_at TEXT,
        kind        TEXT NOT NULL DEFAULT 'pretrain' CHECK (kind IN ('pretrain', 'finetune', 'import')),
        parent_id   INTEGER REFERENCES runs(id) ON DELETE SET NULL
      ) STRICT;
      INSERT INTO runs_new SELECT id, name, dataset_id, config, backend, status, pid, error, notes, tags, step, epoch,
        created_at, updated_at, finished_at, kind, parent_id FROM runs;
      DROP TABLE runs;
      ALTER TABLE runs_new RENAME TO runs;
    `,
  },
  {
    // Images a run skipped because they could not be read (deleted or moved during training).
    version: 40,
    sql: `ALTER TABLE runs ADD COLUMN skipped_images INTEGER NOT NULL DEFAULT 0;`,
  },
  {
    // The kNN monitor (core/analysis/knn.ts): a run's probe set ({datasetId, every} as JSON), and its scores by step.
    version: 41,
    sql: `
      ALTER TABLE runs ADD COLUMN probe TEXT;
      CREATE TABLE knn (
        run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step    INTEGER NOT NULL,
        top1    REAL NOT NULL,
        top5    REAL NOT NULL,
        seconds REAL NOT NULL,
        time    TEXT NOT NULL DEFAULT ${now},
        PRIMARY KEY (run_id, step)
      ) STRICT, WITHOUT ROWID;
    `,
  },
  {
    // The logistic linear probe (core/analysis/linear-probe.ts) became the default probe: runs probed before it keep
    // MAE's LARS recipe; a probe run's result and baselines (JSON); the kNN monitor's logistic probe top-1.
    version: 42,
    sql: `
      UPDATE runs SET config = json_set(config, '$.finetune.probeRecipe', 'lars')
        WHERE kind = 'finetune' AND json_extract(config, '$.finetune.linearProbe') = 1;
      ALTER TABLE runs ADD COLUMN probe_result TEXT;
      ALTER TABLE knn ADD COLUMN probe_top1 REAL;
    `,
  },
  {
    // A run's resumes: the step each continued from, the settings it changed ({field: [before, after]}), and the
    // checkpoints after that step it set aside (--resume RUN:STEP) with the folder they and their metrics went to.
    version: 43,
    sql: `
      CREATE TABLE resumes (
        id         INTEGER PRIMARY KEY,
        run_id     INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        from_step  INTEGER NOT NULL,
        changes    TEXT NOT NULL DEFAULT '{}',
        superseded TEXT NOT NULL DEFAULT '[]',
        folder     TEXT,
        time       TEXT NOT NULL DEFAULT ${now}
      ) STRICT;
    `,
  },
  {
    // Fine-tuning (issue 29): each checkpoint's validation top-1, where it was evaluated (the best one is exported), and a
    // finished fine-tune's result beside its baselines ({top1, probeTop1, baselines: {pixels, init}} as JSON).
    version: 44,
    sql: `
      ALTER TABLE checkpoints ADD COLUMN val_top1 REAL;
      ALTER TABLE runs ADD COLUMN finetune_result TEXT;
    `,
  },
];
