-- Correlation of alignment with downstream results (the paper's headline check), with significance.
-- Answers: "does this alignment score predict benchmark performance across languages?" (correlation) and "does
-- it move with benchmark performance across the training checkpoints of one model?" (correlation_over_training).
-- Benchmarks come from `neuronxa-ray import-benchmarks` (benchmark, lang, value; model/checkpoint NULL = any).
-- Languages meet on canonical codes (canonical_lang(), neuronxa_ray/corpus/languages.py): a benchmark for `zh` meets
-- scores stored as `cmn` or `zho_Hans`. The function runs at query time on both sides, so lakes and benchmark
-- files written before the lang_canonical column existed join the same way.
-- Statistics equal scipy.stats: Pearson = pearsonr, Spearman = spearmanr (Pearson on average ranks, ties share
-- their mean rank); p-values are two-sided (pearson_pvalue / spearman_pvalue, neuronxa_ray/query/stats.py); the 95%
-- intervals are Fisher-z (PearsonRResult.confidence_interval(); for Spearman the same interval on the ranks).

-- benchmark_pairs: one (alignment score, benchmark value) point per model, checkpoint, method, pivot, benchmark
-- and language. Where several benchmark rows fit one score, the most specific wins (a row for this model and
-- checkpoint over a row for this model over a row for any model), then the benchmark's own code in name order,
-- then (rows an import refuses today, but an older lake may hold: two values for one identity) the larger value,
-- so the same query over the same lake always gives the same answer.
CREATE OR REPLACE VIEW benchmark_pairs AS
SELECT
    s.model, s.checkpoint, r.step, s.method, s.pivot_lang, b.benchmark, s.lang, b.lang AS benchmark_lang,
    canonical_lang(s.lang) AS lang_canonical, s.score_mean AS score, b.value,
    b.checkpoint IS NOT NULL AS checkpoint_specific
FROM alignment_summary AS s
JOIN benchmarks AS b
  ON canonical_lang(b.lang) = canonical_lang(s.lang)
 AND (b.model IS NULL OR b.model = s.model)
 AND (b.checkpoint IS NULL OR b.checkpoint = s.checkpoint)
LEFT JOIN latest_runs AS r ON r.model = s.model AND r.checkpoint = s.checkpoint
QUALIFY row_number() OVER (
    PARTITION BY s.model, s.checkpoint, s.method, s.pivot_lang, b.benchmark, s.lang
    ORDER BY b.checkpoint IS NOT NULL DESC, b.model IS NOT NULL DESC, b.lang, b.value DESC
) = 1;

-- clip_corr(c): a coefficient clipped into [-1, 1] (rounding can leave it just outside, scipy clips the same
-- way); NaN (a constant input) and NULL pass through. NaN sorts above every number in DuckDB, hence the isnan.
CREATE OR REPLACE MACRO clip_corr(c) AS
    CASE WHEN c > 1 AND NOT isnan(c) THEN 1.0 WHEN c < -1 THEN -1.0 ELSE c END;

-- correlate(points): per group key g (a STRUCT), the correlation of x and y over the group's points with its
-- p-values and 95% Fisher-z intervals. `points` names a view with columns g, x, y.
-- Spearman's rho is computed from the centred average ranks: their mean is exactly (n+1)/2 and every deviation
-- a multiple of 1/2, so the sums are exact in double precision and identical rank orders give exactly 1 (a
-- one-ulp error there would turn scipy's p = 0 into 1e-8 at n = 3).
CREATE OR REPLACE MACRO correlate(points) AS TABLE
WITH pts AS (
    SELECT g, x, y FROM query_table(points) WHERE x IS NOT NULL AND y IS NOT NULL
),
ranked AS (
    SELECT
        g, x, y,
        (rank() OVER (PARTITION BY g ORDER BY x) + count(*) OVER (PARTITION BY g)
         - rank() OVER (PARTITION BY g ORDER BY x DESC) + 1) / 2.0
            - (count(*) OVER (PARTITION BY g) + 1) / 2.0 AS x_dev,
        (rank() OVER (PARTITION BY g ORDER BY y) + count(*) OVER (PARTITION BY g)
         - rank() OVER (PARTITION BY g ORDER BY y DESC) + 1) / 2.0
            - (count(*) OVER (PARTITION BY g) + 1) / 2.0 AS y_dev
    FROM pts
),
coefficients AS (
    SELECT
        g,
        count(*) AS n,
        clip_corr(corr(x, y ORDER BY x, y)) AS pearson,  -- ordered: the same sum, bit for bit, every query
        clip_corr(CAST(sum(x_dev * y_dev) AS DOUBLE)
                  / sqrt(CAST(sum(x_dev * x_dev) AS DOUBLE) * CAST(sum(y_dev * y_dev) AS DOUBLE))) AS spearman
    FROM ranked
    GROUP BY g
)
SELECT
    g, CAST(n AS INTEGER) AS n, pearson, spearman,
    pearson_pvalue(pearson, n) AS pearson_p,
    spearman_pvalue(spearman, n) AS spearman_p,
    fisher_ci_low(pearson, n, 0.95) AS pearson_ci_low,
    fisher_ci_high(pearson, n, 0.95) AS pearson_ci_high,
    fisher_ci_low(spearman, n, 0.95) AS spearman_ci_low,
    fisher_ci_high(spearman, n, 0.95) AS spearman_ci_high
FROM coefficients;

CREATE OR REPLACE VIEW _correlation_points AS
SELECT
    {'model': model, 'checkpoint': checkpoint, 'method': method, 'pivot_lang': pivot_lang,
     'benchmark': benchmark} AS g,
    score AS x, value AS y
FROM benchmark_pairs;

-- correlation(model, checkpoint, method, pivot_lang, benchmark, n_languages, pearson, spearman, pearson_p,
-- spearman_p, pearson_ci_low, pearson_ci_high, spearman_ci_low, spearman_ci_high): across languages.
-- Grain: (model, checkpoint, method, pivot_lang, benchmark).
CREATE OR REPLACE VIEW correlation AS
SELECT
    g.model, g.checkpoint, g.method, g.pivot_lang, g.benchmark,
    n AS n_languages, pearson, spearman, pearson_p, spearman_p,
    pearson_ci_low, pearson_ci_high, spearman_ci_low, spearman_ci_high
FROM correlate('_correlation_points') AS c;

-- Points over training: benchmark rows that name a checkpoint, per language and (lang '*') the mean over the
-- languages paired at that checkpoint of both the score and the benchmark value.
CREATE OR REPLACE VIEW _training_points AS
WITH per_language AS (
    SELECT model, checkpoint, step, method, pivot_lang, benchmark, lang, score, value
    FROM benchmark_pairs
    WHERE checkpoint_specific
),
overall AS (
    SELECT model, checkpoint, step, method, pivot_lang, benchmark, '*' AS lang, avg(score ORDER BY lang) AS score,
           avg(value ORDER BY lang) AS value
    FROM per_language
    GROUP BY ALL
),
points AS (
    SELECT * FROM per_language
    UNION ALL
    SELECT * FROM overall
)
SELECT
    {'model': model, 'method': method, 'pivot_lang': pivot_lang, 'benchmark': benchmark, 'lang': lang} AS g,
    score AS x, value AS y, step
FROM points;

-- correlation_over_training(model, method, pivot_lang, benchmark, lang, n_checkpoints, first_step, last_step,
-- pearson, spearman, pearson_p, spearman_p, pearson_ci_low, pearson_ci_high, spearman_ci_low,
-- spearman_ci_high): score vs benchmark across the checkpoints of one model (steps from runs.step; NULL when the
-- job gave none); lang '*' correlates the means over languages.
-- Grain: (model, method, pivot_lang, benchmark, lang).
CREATE OR REPLACE VIEW correlation_over_training AS
WITH steps AS (
    SELECT g, min(step) AS first_step, max(step) AS last_step
    FROM _training_points
    GROUP BY g
)
SELECT
    c.g.model, c.g.method, c.g.pivot_lang, c.g.benchmark, c.g.lang,
    c.n AS n_checkpoints, s.first_step, s.last_step,
    c.pearson, c.spearman, c.pearson_p, c.spearman_p,
    c.pearson_ci_low, c.pearson_ci_high, c.spearman_ci_low, c.spearman_ci_high
FROM correlate('_training_points') AS c
JOIN steps AS s ON s.g = c.g;
