DROP TABLE IF EXISTS job_runs;
DROP TABLE IF EXISTS operator_actions;
