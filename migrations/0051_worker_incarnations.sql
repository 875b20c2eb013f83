-- A worker node's current incarnation, recorded when it starts (workers/tasks.py). Every
-- lease a process takes carries its incarnation in the token's first 8 bytes
-- (data/workers.py), so a node that restarts after a crash knows which leases its dead
-- predecessor held and resumes them at once instead of waiting for them to run out.
CREATE TABLE worker_incarnations (
    node        text PRIMARY KEY,
    incarnation uuid NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
