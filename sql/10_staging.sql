-- Staging: one row per cell of every stored cosine matrix, and the same cells recomputed from stored states.
-- Answers: "what is C[i, j] for this model, checkpoint, pivot, language, method and layer?"
-- Raw views (sentence_states, neuron_counts, similarity, runs, benchmarks) are created over the lake's Parquet
-- files by neuronxa_ray/query/connect.py before this file runs. NaN (a zero or NaN state) becomes NULL: it never wins.

CREATE OR REPLACE VIEW similarity_cells AS
WITH cells AS (
    SELECT
        model, checkpoint, pivot_lang, lang, method, layer,
        pivot_sentence AS i,
        unnest(range(len(cosine))) AS j,
        unnest(cosine) AS c
    FROM similarity
)
SELECT
    model, checkpoint, pivot_lang, lang, method, layer, i, CAST(j AS INTEGER) AS j,
    CASE WHEN isnan(c) THEN NULL ELSE c END AS cosine
FROM cells;

-- Any pivot: cosine between stored states of two languages, computed by DuckDB (slow; the actors store the
-- configured pivot's matrices in `similarity`). Filter on pivot and lang: the filter is pushed into the join.
CREATE OR REPLACE VIEW state_similarity_cells AS
WITH cells AS (
    SELECT
        p.model, p.checkpoint, p.lang AS pivot_lang, l.lang, p.method, p.layer,
        p.sentence AS i, l.sentence AS j,
        list_cosine_similarity(p.state, l.state) AS c
    FROM sentence_states AS p
    JOIN sentence_states AS l
      ON p.model = l.model AND p.checkpoint = l.checkpoint AND p.method = l.method AND p.layer = l.layer
     AND p.lang <> l.lang
)
SELECT
    model, checkpoint, pivot_lang, lang, method, layer, i, j,
    CASE WHEN isnan(c) THEN NULL ELSE CAST(c AS DOUBLE) END AS cosine
FROM cells;
