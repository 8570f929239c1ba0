-- Runs and training curves.
-- Answers: "which runs are in the lake, with what settings and timings?" and "how does alignment move
-- across training checkpoints?" `runs` is the raw runs table (one row per model/checkpoint run); a rerun adds a
-- row, `latest_runs` keeps the newest per model and checkpoint.

CREATE OR REPLACE VIEW latest_runs AS
SELECT * FROM runs
QUALIFY row_number() OVER (PARTITION BY model, checkpoint ORDER BY finished_at DESC, run_id DESC) = 1;

-- training_curve(model, checkpoint, step, method, pivot_lang, lang, score_mean, ci_low, ci_high): ordered by step
-- when the job gave steps, by checkpoint name otherwise; lang '*' is the mean over the run's languages. score_mean
-- is alignment_summary's (to rounding: computed as hits / (sentences x layers) from sentence_hits). ci_low /
-- ci_high: the 95% bootstrap interval over sentences (1,000 resamples, seed 0: alignment_interval for a language,
-- language_mean_interval_at() for '*', sentences resampled jointly across languages).
CREATE OR REPLACE VIEW training_curve AS
WITH per_language AS (  -- the intervals compaction stored, and those of languages written since
    SELECT
        i.model, i.checkpoint, r.step, i.method, i.pivot_lang, i.lang, i.score_mean,
        i.score_ci_low AS ci_low, i.score_ci_high AS ci_high
    FROM alignment_interval AS i
    LEFT JOIN latest_runs AS r USING (model, checkpoint)
),
overall AS (
    SELECT model, checkpoint, step, method, pivot_lang, '*' AS lang, avg(score_mean ORDER BY lang) AS score_mean
    FROM per_language
    GROUP BY ALL
)
SELECT * FROM per_language
UNION ALL
SELECT o.*, m.score_ci_low AS ci_low, m.score_ci_high AS ci_high
FROM overall AS o
LEFT JOIN language_mean_interval_of('sentence_hits', 0.95, 1000, 0) AS m USING (model, checkpoint, method, pivot_lang)
ORDER BY model, step NULLS LAST, checkpoint, method, pivot_lang, lang;

-- training_change_at(level := 0.95, resamples := 1000, seed := 0): did the layer-mean alignment score change from
-- the previous checkpoint (in training_curve's order)? Per checkpoint after a model's first, per method, pivot and
-- language, and for the mean over languages (lang '*'): the paired difference over the same sentences
-- (paired_difference), its interval and two-sided bootstrap p-value, and q_value: the Benjamini-Hochberg adjusted
-- p-value over the family (model, pivot_lang, lang) - every method and step of that curve - so the steps with
-- q_value < 0.05 are the changes called significant at a 5% false discovery rate. Bootstrap p-values are never
-- below 2 / (resamples + 1): many steps need many resamples.
-- (model, checkpoint, step, previous_checkpoint, previous_step, method, pivot_lang, lang, score, previous_score,
-- difference, ci_low, ci_high, p_value, q_value, n_tests, n_languages, n_sentences, level, resamples, seed)
-- Grain: (model, checkpoint, method, pivot_lang, lang).
CREATE OR REPLACE MACRO training_change_at(level := 0.95, resamples := 1000, seed := 0) AS TABLE
WITH hits AS MATERIALIZED (  -- one pass over matches for both sides of every pair
    SELECT * FROM sentence_hits
),
checkpoints AS (
    SELECT c.model, c.checkpoint, r.step
    FROM (SELECT DISTINCT model, checkpoint FROM hits) AS c
    LEFT JOIN latest_runs AS r USING (model, checkpoint)
),
ordered AS (
    SELECT
        model, checkpoint, step,
        lag(checkpoint) OVER w AS previous_checkpoint,
        lag(step) OVER w AS previous_step
    FROM checkpoints
    WINDOW w AS (PARTITION BY model ORDER BY step NULLS LAST, checkpoint)
),
sentence_pairs AS (
    SELECT
        o.model AS model_a, o.previous_checkpoint AS checkpoint_a, o.model AS model_b, o.checkpoint AS checkpoint_b,
        b.method, b.pivot_lang, b.lang, b.sentence,
        a.mutual_hits AS hits_a, b.mutual_hits AS hits_b, a.n_layers AS layers_a, b.n_layers AS layers_b
    FROM ordered AS o
    JOIN hits AS b ON b.model = o.model AND b.checkpoint = o.checkpoint
    JOIN hits AS a
      ON a.model = o.model AND a.checkpoint = o.previous_checkpoint
     AND a.method = b.method AND a.pivot_lang = b.pivot_lang AND a.lang = b.lang AND a.sentence = b.sentence
),
ranked AS (
    SELECT
        c.*, o.step, o.previous_step,
        CAST(count(*) OVER family AS INTEGER) AS n_tests,
        row_number() OVER (PARTITION BY c.model_b, c.pivot_lang, c.lang ORDER BY c.p_value, o.step, c.checkpoint_b, c.method)
            AS p_rank
    FROM paired_bootstrap_of('sentence_pairs', level, resamples, seed) AS c
    JOIN ordered AS o ON o.model = c.model_b AND o.checkpoint = c.checkpoint_b
    WINDOW family AS (PARTITION BY c.model_b, c.pivot_lang, c.lang)
)
SELECT
    model_b AS model, checkpoint_b AS checkpoint, step, checkpoint_a AS previous_checkpoint, previous_step,
    method, pivot_lang, lang, score_b AS score, score_a AS previous_score, difference, ci_low, ci_high, p_value,
    least(1.0, min(p_value * n_tests / p_rank) OVER (
        PARTITION BY model_b, pivot_lang, lang ORDER BY p_rank DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    )) AS q_value,
    n_tests, n_languages, n_sentences, level, resamples, seed
FROM ranked
ORDER BY model, step NULLS LAST, checkpoint, method, pivot_lang, lang;

-- training_change: training_change_at() at its defaults (95%, 1,000 resamples, seed 0).
-- Grain: (model, checkpoint, method, pivot_lang, lang).
CREATE OR REPLACE VIEW training_change AS SELECT * FROM training_change_at();

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
