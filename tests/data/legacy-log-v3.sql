-- A decision log as adaptive_sched wrote it at commit 18dabd5 (schema version 3, journal mode wal):
-- its open_database() made the schema, then a run and three observed decisions were added with SQL.
-- tests/test_store_schema.py rebuilds the file from this text and opens it with today's code.
PRAGMA auto_vacuum = 2;
PRAGMA user_version = 3;
BEGIN TRANSACTION;
CREATE TABLE "decisions" (
   "id" INTEGER PRIMARY KEY,
   "run" INTEGER,
   "time" REAL,
   "stage" TEXT,
   "n" INTEGER,
   "d" INTEGER,
   "kv_len" INTEGER,
   "batch" INTEGER,
   "heads" INTEGER,
   "precision" TEXT,
   "after" TEXT,
   "backend" TEXT,
   "propensity" REAL,
   "explored" INTEGER,
   "policy_version" INTEGER,
   "pred_cpu" REAL,
   "pred_gpu" REAL,
   "pred_npu" REAL,
   "f_flops" REAL,
   "f_mem_bytes" REAL,
   "f_intensity" REAL,
   "f_ar" REAL,
   "f_score_size" REAL,
   "f_pad_n" REAL,
   "f_pad_d" REAL,
   "sample_rate" REAL,
   "context" TEXT
, prob_cpu FLOAT, prob_gpu FLOAT, prob_npu FLOAT);
INSERT INTO "decisions" VALUES(4294967297,1,1700000001.0,'qkv',1,4096,512,1,32,'int8',NULL,'gpu',0.9,0,1,NULL,0.001,0.001,NULL,NULL,NULL,NULL,NULL,NULL,NULL,1.0,NULL,NULL,0.9,0.1);
INSERT INTO "decisions" VALUES(4294967298,1,1700000002.0,'attn',1,4096,512,1,32,'int8','gpu','npu',0.9,0,1,NULL,0.001,0.001,NULL,NULL,NULL,NULL,NULL,NULL,NULL,1.0,NULL,NULL,0.9,0.1);
INSERT INTO "decisions" VALUES(4294967299,1,1700000003.0,'qkv',1,4096,512,1,32,'int8',NULL,'npu',0.9,0,1,NULL,0.001,0.001,NULL,NULL,NULL,NULL,NULL,NULL,NULL,1.0,NULL,NULL,0.9,0.1);
CREATE TABLE "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
INSERT INTO "meta" VALUES('schema_version','3');
INSERT INTO "meta" VALUES('last_run_id','1');
CREATE TABLE "outcomes" (
   "decision_id" INTEGER PRIMARY KEY,
   "time" REAL,
   "latency_s" REAL,
   "ok" INTEGER,
   "error" TEXT
);
INSERT INTO "outcomes" VALUES(4294967297,1700000001.0,0.0012,1,NULL);
INSERT INTO "outcomes" VALUES(4294967298,1700000002.0,0.0007,1,NULL);
INSERT INTO "outcomes" VALUES(4294967299,1700000003.0,0.0015,1,NULL);
CREATE TABLE "priors" (
   "id" INTEGER PRIMARY KEY,
   "name" TEXT,
   "stage" TEXT,
   "device" TEXT,
   "model" TEXT,
   "params" TEXT,
   "content_hash" TEXT,
   "training_rows" INTEGER,
   "rows" TEXT,
   "metrics" TEXT,
   "created_at" REAL
);
CREATE TABLE "profiles" (
   "id" INTEGER PRIMARY KEY,
   "device" TEXT,
   "executor" TEXT,
   "backend" TEXT,
   "stage" TEXT,
   "n" INTEGER,
   "d" INTEGER,
   "kv_len" INTEGER,
   "batch" INTEGER,
   "heads" INTEGER,
   "precision" TEXT,
   "warmup" INTEGER,
   "repetitions" INTEGER,
   "median_s" REAL,
   "p10_s" REAL,
   "p90_s" REAL,
   "min_s" REAL,
   "max_s" REAL,
   "ok" INTEGER,
   "error" TEXT,
   "measured_at" REAL
);
CREATE TABLE "runs" (
   "id" INTEGER PRIMARY KEY,
   "started_at" REAL,
   "host" TEXT,
   "pid" INTEGER,
   "config_hash" TEXT,
   "device_profile" TEXT,
   "package_version" TEXT,
   "config" TEXT
);
INSERT INTO "runs" VALUES(1,1700000000.0,'board',42,NULL,'rk3588','old','{}');
CREATE INDEX "idx_decisions_time"
    ON "decisions" ("time");
CREATE UNIQUE INDEX "idx_profiles_device_backend_stage_n_d_kv_len_batch_heads_precision"
    ON "profiles" ("device", "backend", "stage", "n", "d", "kv_len", "batch", "heads", "precision");
CREATE UNIQUE INDEX "idx_priors_name_stage"
    ON "priors" ("name", "stage");
CREATE VIEW logged AS SELECT d.*, o.time AS observed_at, o.latency_s, o.ok, o.error FROM decisions d LEFT JOIN outcomes o ON o.decision_id = d.id;
COMMIT;
