-- A registry database written by wanllmdb at schema 1 (before tags, tombstones and links):
-- project 'vision', artifact 'mnist' v1 ('a.txt' = b'one', alias 'best') and v2 (b'two'),
-- both logged by run 'run1', which used v1. Made with that version's LocalRegistry, dumped by iterdump().
BEGIN TRANSACTION;
CREATE TABLE aliases (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    PRIMARY KEY (artifact_id, alias)
);
INSERT INTO "aliases" VALUES(1,'latest',2);
INSERT INTO "aliases" VALUES(1,'best',1);
CREATE TABLE artifact_uses (
    run_id TEXT NOT NULL REFERENCES runs(id),
    version_id INTEGER NOT NULL REFERENCES versions(id),
    used_at REAL NOT NULL,
    PRIMARY KEY (run_id, version_id)
);
INSERT INTO "artifact_uses" VALUES('run1',1,1.79585043617554402347e+09);
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (project_id, name)
);
INSERT INTO "artifacts" VALUES(1,1,'mnist','dataset',1.79585043616870522497e+09);
CREATE TABLE blob_md5 (   -- MD5 of stored blobs, computed by the storage side
    sha256 TEXT PRIMARY KEY,
    md5 TEXT NOT NULL
);
INSERT INTO "blob_md5" VALUES('7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed','f97c5d29941bfb1b2fdab0874906ab82');
INSERT INTO "blob_md5" VALUES('3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3','b8a9f715dbb64fd5c56e7783c6820a61');
CREATE TABLE blob_sizes (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
INSERT INTO "blob_sizes" VALUES('7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed',3);
INSERT INTO "blob_sizes" VALUES('3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3',3);
CREATE TABLE drafts (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    description TEXT,
    metadata TEXT NOT NULL,
    run_id TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
INSERT INTO "projects" VALUES(1,'vision',1.79585043616561412815e+09);
CREATE TABLE run_history (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    summary TEXT NOT NULL,
    tags TEXT NOT NULL,
    notes TEXT,
    run_group TEXT,
    job_type TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
INSERT INTO "runs" VALUES('run1',1,'first-run','running','{}','{}','[]',NULL,NULL,NULL,1.79585043616543507576e+09,NULL);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    size INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    description TEXT,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    run_id TEXT,
    UNIQUE (artifact_id, version)
);
INSERT INTO "versions" VALUES(1,1,1,'756c8e6d5d339a5b68bc0d6bc8b148659e65e74d21a7ea082697b3ab916d844d','{"format":1,"entries":[{"path":"a.txt","size":3,"md5":"f97c5d29941bfb1b2fdab0874906ab82","sha256":"7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"}]}',3,1,NULL,'{}',1.79585043616870522497e+09,'run1');
INSERT INTO "versions" VALUES(2,1,2,'7658aa131e27f4a0d32921cdbb9d370ce4641bdf53526c29205f55a1c7fc2be3','{"format":1,"entries":[{"path":"a.txt","size":3,"md5":"b8a9f715dbb64fd5c56e7783c6820a61","sha256":"3fc4ccfe745870e2c0d99f71f30ff0656c8dedd41cc1d7d3d376b0dbe685e2f3"}]}',3,1,NULL,'{}',1.79585043617500066757e+09,'run1');
CREATE INDEX drafts_age ON drafts(created_at);
CREATE INDEX blob_sizes_size ON blob_sizes(size);
COMMIT;
PRAGMA user_version = 1;
