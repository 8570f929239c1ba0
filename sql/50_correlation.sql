-- Correlation of alignment with downstream results across languages (the paper's headline check).
-- Answers: "does this alignment score predict benchmark performance per language?" Benchmarks come from
-- `neuronxa-ray import-benchmarks` (rows of benchmark, lang, value; model/checkpoint NULL = any).
-- Spearman is Pearson on average ranks (ties share their mean rank), as scipy.stats.spearmanr.

-- correlation_of(summary_view) over any relation shaped like alignment_summary; correlation uses alignment_summary.
-- Grain: (model, checkpoint, method, pivot_lang, benchmark).
CREATE OR REPLACE MACRO correlation_of(summary_view) AS TABLE
WITH pairs AS (
    SELECT s.model, s.checkpoint, s.method, s.pivot_lang, b.benchmark, s.lang, s.score_mean AS score, b.value
    FROM query_table(summary_view) AS s
    JOIN benchmarks AS b
      ON b.lang = s.lang
     AND (b.model IS NULL OR b.model = s.model)
     AND (b.checkpoint IS NULL OR b.checkpoint = s.checkpoint)
),
ranked AS (
    SELECT
        *,
        (rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY score)
         + count(*) OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark)
         - rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY score DESC) + 1) / 2.0
            AS score_rank,
        (rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY value)
         + count(*) OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark)
         - rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY value DESC) + 1) / 2.0
            AS value_rank
    FROM pairs
)
SELECT
    model, checkpoint, method, pivot_lang, benchmark,
    CAST(count(*) AS INTEGER) AS n_languages,
    corr(score, value) AS pearson,
    corr(score_rank, value_rank) AS spearman
FROM ranked
GROUP BY ALL;

CREATE OR REPLACE VIEW correlation AS SELECT * FROM correlation_of('alignment_summary');
