-- Runs and training curves.
-- Answers: "which runs are in the lake, with what settings and timings?" and "how does alignment move
-- across training checkpoints?" `runs` is the raw runs table (one row per model/checkpoint run); a rerun adds a
-- row, `latest_runs` keeps the newest per model and checkpoint.

CREATE OR REPLACE VIEW latest_runs AS
SELECT * FROM runs
QUALIFY row_number() OVER (PARTITION BY model, checkpoint ORDER BY finished_at DESC) = 1;

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
SELECT * FROM overall;
