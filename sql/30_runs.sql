-- Runs and training curves.
-- Answers: "which runs are in the lake, with what settings and timings?" and "how does alignment move
-- across training checkpoints?" `runs` is the raw runs table (one row per model/checkpoint run); a rerun adds a
-- row, `latest_runs` keeps the newest per model and checkpoint.

CREATE OR REPLACE VIEW latest_runs AS
SELECT * FROM runs
QUALIFY row_number() OVER (PARTITION BY model, checkpoint ORDER BY finished_at DESC, run_id DESC) = 1;

-- training_curve(model, checkpoint, step, method, pivot, lang, score_mean): ordered by step when the job gave
-- steps, by checkpoint name otherwise; lang '*' is the mean over the run's languages.
CREATE OR REPLACE VIEW training_curve AS
WITH per_language AS (
    SELECT s.model, s.checkpoint, r.step, s.method, s.pivot_lang, s.lang, s.score_mean
    FROM alignment_summary AS s
    LEFT JOIN latest_runs AS r USING (model, checkpoint)
),
overall AS (
    SELECT model, checkpoint, step, method, pivot_lang, '*' AS lang, avg(score_mean) AS score_mean
    FROM per_language
    GROUP BY ALL
)
SELECT * FROM per_language
UNION ALL
SELECT * FROM overall
ORDER BY model, step NULLS LAST, checkpoint, method, pivot_lang, lang;

-- unit_status(model, checkpoint, lang, status, attempts, last_error, last_node, last_finished_at)
-- Grain: one row per (model, checkpoint, lang) that a run planned or attempted. status: done (its last attempt
-- wrote it), failed (its last attempt failed, or it was lost more often than max_attempts), missing (planned by a
-- run, never attempted: the run died first). A rerun computes exactly the units that are not done.
CREATE OR REPLACE VIEW unit_status AS
WITH last_attempt AS (
    SELECT
        model, checkpoint, lang,
        CAST(count(*) AS INTEGER) AS attempts,
        arg_max(status, finished_at) AS last_status,
        arg_max(error, finished_at) AS last_error,
        arg_max(node, finished_at) AS last_node,
        max(finished_at) AS last_finished_at
    FROM attempts
    GROUP BY ALL
),
planned AS (
    SELECT DISTINCT model, checkpoint, unnest(languages) AS lang FROM runs
    UNION
    SELECT DISTINCT model, checkpoint, lang FROM attempts
)
SELECT
    p.model, p.checkpoint, p.lang,
    CASE a.last_status WHEN 'ok' THEN 'done' WHEN 'failed' THEN 'failed' WHEN 'lost' THEN 'failed'
         ELSE 'missing' END AS status,
    coalesce(a.attempts, 0) AS attempts,
    CASE WHEN a.last_status = 'ok' THEN NULL ELSE a.last_error END AS last_error,
    a.last_node, a.last_finished_at
FROM planned AS p
LEFT JOIN last_attempt AS a USING (model, checkpoint, lang)
ORDER BY p.model, p.checkpoint, p.lang;

-- checkpoint_status(model, checkpoint, n_done, n_failed, n_missing): "what is done, failed, missing per checkpoint"
CREATE OR REPLACE VIEW checkpoint_status AS
SELECT
    model, checkpoint,
    CAST(count(*) FILTER (WHERE status = 'done') AS INTEGER) AS n_done,
    CAST(count(*) FILTER (WHERE status = 'failed') AS INTEGER) AS n_failed,
    CAST(count(*) FILTER (WHERE status = 'missing') AS INTEGER) AS n_missing
FROM unit_status
GROUP BY ALL
ORDER BY model, checkpoint;
