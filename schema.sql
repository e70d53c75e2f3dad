-- One row per (user, repository): the user's remote Bazel server for that repository.
-- Written only by the orchestrator (GetServer / ReportReady / the reconciler).
CREATE TABLE BuildSessions (
    UserId STRING(MAX) NOT NULL,
    RepoHash STRING(MAX) NOT NULL, -- MD5 of the local path
    SessionId STRING(MAX),         -- ID to handle desktop bounces
    PodIP STRING(MAX),
    Status STRING(MAX),            -- PENDING, READY, IDLE (culled; output base kept)
    -- Fencing token: +1 each time the row wants a new pod (bounce, resume, lost pod).
    -- Pods carry it; a pod of an older generation is garbage for every replica.
    Generation INT64,
    -- Bazel's command port in the pod (READY): what the hop needs, readable by every
    -- replica after any restart.
    CommandPort INT64
) PRIMARY KEY (UserId, RepoHash)
