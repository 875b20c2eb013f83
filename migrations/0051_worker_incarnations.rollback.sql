DROP TABLE IF EXISTS worker_incarnations;
