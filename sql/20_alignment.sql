-- Alignment and retrieval: mutual nearest neighbours over the cosine matrices (MEXA / NeuronXA).
-- Answers: "per layer, what share of parallel pairs find each other?" A hit at i needs C[i,i] strictly
-- greater than every other value of row i (pivot -> lang retrieval) and of column i (lang -> pivot).
-- Ties are misses; a NULL (zero or NaN state) diagonal never hits, a NULL rival never wins.
--
-- The scores read `matches`: per (pivot, lang, method, layer, sentence i) the diagonal, the best rivals, the
-- hit decisions and the partner's ranks, computed from C on the device (neuronxa_ray/compute/matching.py), O(n) rows per
-- layer, through their counts per layer (`layer_hits`, 15_hits.sql: stored for compacted checkpoints). The cell-based path (O(n^2) cells of `similarity` or of state pairs) stays for ad-hoc checks:
-- `mutual_nn_from_cells`, `alignment_from_cells`, `alignment_from_states` make the same decisions.
-- Each view's grain (its unique key) is stated above it.

-- mutual_nn(cells_view): the hit decisions from a relation of cells (model, checkpoint, pivot_lang, lang, method,
-- layer, i, j, cosine). Grain: (model, checkpoint, pivot_lang, lang, method, layer, sentence).
CREATE OR REPLACE MACRO mutual_nn(cells_view) AS TABLE
WITH cells AS (
    SELECT * FROM query_table(cells_view)
),
row_best AS (
    SELECT
        model, checkpoint, pivot_lang, lang, method, layer, i,
        max(cosine) FILTER (WHERE i = j) AS diagonal,
        max(cosine) FILTER (WHERE i <> j) AS row_rival
    FROM cells
    GROUP BY ALL
),
column_best AS (
    SELECT
        model, checkpoint, pivot_lang, lang, method, layer, j AS i,
        max(cosine) FILTER (WHERE i <> j) AS column_rival
    FROM cells
    GROUP BY ALL
)
SELECT
    r.model, r.checkpoint, r.pivot_lang, r.lang, r.method, r.layer, r.i AS sentence,
    r.diagonal, r.row_rival, c.column_rival,
    coalesce(r.diagonal > coalesce(r.row_rival, '-inf'::DOUBLE), false) AS row_hit,
    coalesce(r.diagonal > coalesce(c.column_rival, '-inf'::DOUBLE), false) AS column_hit
FROM row_best AS r
JOIN column_best AS c USING (model, checkpoint, pivot_lang, lang, method, layer, i);

-- alignment_of(mutual_nn_view): per-layer mutual-NN score from per-sentence decisions (row_hit, column_hit).
-- Grain: (model, checkpoint, method, pivot_lang, lang, layer).
CREATE OR REPLACE MACRO alignment_of(mutual_nn_view) AS TABLE
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer,
    avg(CASE WHEN row_hit AND column_hit THEN 1.0 ELSE 0.0 END) AS score,
    CAST(count(*) AS INTEGER) AS n_sentences
FROM query_table(mutual_nn_view)
GROUP BY ALL;

-- retrieval_of(mutual_nn_view): per-layer retrieval accuracy in both directions.
-- Grain: (model, checkpoint, method, pivot_lang, lang, layer, direction).
CREATE OR REPLACE MACRO retrieval_of(mutual_nn_view) AS TABLE
WITH per_layer AS (
    SELECT
        model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer,
        avg(CASE WHEN row_hit THEN 1.0 ELSE 0.0 END) AS pivot_to_lang,
        avg(CASE WHEN column_hit THEN 1.0 ELSE 0.0 END) AS lang_to_pivot
    FROM query_table(mutual_nn_view)
    GROUP BY ALL
)
SELECT model, checkpoint, method, pivot_lang, lang, layer, 'pivot_to_lang' AS direction, pivot_to_lang AS accuracy
FROM per_layer
UNION ALL
SELECT model, checkpoint, method, pivot_lang, lang, layer, 'lang_to_pivot' AS direction, lang_to_pivot AS accuracy
FROM per_layer;

-- summary_of(alignment_view): the layer mean (the paper's score), the best layer (the lowest reaching the max).
-- Grain: (model, checkpoint, method, pivot_lang, lang).
CREATE OR REPLACE MACRO summary_of(alignment_view) AS TABLE
WITH layers AS (
    SELECT *, max(score) OVER (PARTITION BY model, checkpoint, method, pivot_lang, lang) AS layer_max
    FROM query_table(alignment_view)
)
SELECT
    model, checkpoint, method, pivot_lang, lang,
    avg(score ORDER BY layer) AS score_mean,  -- ordered: the same sum, bit for bit, every query
    max(score) AS score_max,
    min(layer) FILTER (WHERE score = layer_max) AS best_layer,
    CAST(count(*) AS INTEGER) AS n_layers,
    max(n_sentences) AS n_sentences
FROM layers
GROUP BY ALL;

-- mutual_nn(model, checkpoint, pivot_lang, lang, method, layer, sentence, diagonal, row_rival, column_rival,
-- row_hit, column_hit, row_rank, column_rank): the per-sentence decisions as the device made them.
-- Grain: (model, checkpoint, pivot_lang, lang, method, layer, sentence).
CREATE OR REPLACE VIEW mutual_nn AS
SELECT
    model, checkpoint, pivot_lang, lang, method, layer, sentence,
    diagonal, row_rival, column_rival, row_hit, column_hit, row_rank, column_rank
FROM matches;

-- The same decisions from the stored cosine cells (only where `similarity` was stored: store_similarity).
-- Grain: (model, checkpoint, pivot_lang, lang, method, layer, sentence).
CREATE OR REPLACE VIEW mutual_nn_from_cells AS SELECT * FROM mutual_nn('similarity_cells');

-- alignment(model, checkpoint, method, pivot_lang, lang, layer, score, n_sentences): score is the share of
-- mutual-NN hits, alignment_of('mutual_nn') counted per layer (layer_hits), equal to it bit for bit.
-- Grain: (model, checkpoint, method, pivot_lang, lang, layer).
CREATE OR REPLACE VIEW alignment AS
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer,
    mutual_hits::DOUBLE / n_sentences AS score, n_sentences
FROM layer_hits;

-- The same score from the stored cosine cells. Grain: (model, checkpoint, method, pivot_lang, lang, layer).
CREATE OR REPLACE VIEW alignment_from_cells AS SELECT * FROM alignment_of('mutual_nn_from_cells');

-- The same score for any pivot, recomputed by DuckDB from stored states (SELECT ... WHERE pivot_lang = 'ita'),
-- and its per-sentence decisions. Grain: (model, checkpoint, method, pivot_lang, lang, layer); mutual_nn_from_states:
-- (model, checkpoint, pivot_lang, lang, method, layer, sentence).
CREATE OR REPLACE VIEW mutual_nn_from_states AS SELECT * FROM mutual_nn('state_similarity_cells');
CREATE OR REPLACE VIEW alignment_from_states AS SELECT * FROM alignment_of('mutual_nn_from_states');

-- retrieval(model, checkpoint, method, pivot_lang, lang, layer, direction, accuracy): retrieval_of('mutual_nn'),
-- counted per layer (layer_hits). Grain: (model, checkpoint, method, pivot_lang, lang, layer, direction).
CREATE OR REPLACE VIEW retrieval AS
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer, 'pivot_to_lang' AS direction,
    pivot_to_lang_hits::DOUBLE / n_sentences AS accuracy
FROM layer_hits
UNION ALL
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer, 'lang_to_pivot' AS direction,
    lang_to_pivot_hits::DOUBLE / n_sentences AS accuracy
FROM layer_hits;

-- retrieval_ranks(model, checkpoint, method, pivot_lang, lang, layer, direction, p_at_1, p_at_5, p_at_10, mrr,
-- n_sentences): P@k = share of sentences whose partner ranks <= k (ties count against it, so p_at_1 equals
-- retrieval's accuracy); MRR = mean of 1 / rank, 0 for a zero/NaN state (no rank).
-- Grain: (model, checkpoint, method, pivot_lang, lang, layer, direction).
CREATE OR REPLACE VIEW retrieval_ranks AS
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer, 'pivot_to_lang' AS direction,
    pivot_to_lang_top1::DOUBLE / n_sentences AS p_at_1, pivot_to_lang_top5::DOUBLE / n_sentences AS p_at_5,
    pivot_to_lang_top10::DOUBLE / n_sentences AS p_at_10, pivot_to_lang_rr_sum / n_sentences AS mrr, n_sentences
FROM layer_hits
UNION ALL
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer, 'lang_to_pivot' AS direction,
    lang_to_pivot_top1::DOUBLE / n_sentences AS p_at_1, lang_to_pivot_top5::DOUBLE / n_sentences AS p_at_5,
    lang_to_pivot_top10::DOUBLE / n_sentences AS p_at_10, lang_to_pivot_rr_sum / n_sentences AS mrr, n_sentences
FROM layer_hits;

-- alignment_summary(model, checkpoint, method, pivot_lang, lang, score_mean, score_max, best_layer, n_layers,
-- n_sentences): score_mean is the paper's layer-mean score; best_layer is the lowest layer reaching score_max.
-- Grain: (model, checkpoint, method, pivot_lang, lang).
CREATE OR REPLACE VIEW alignment_summary AS SELECT * FROM summary_of('alignment');

-- alignment_matrix(model, checkpoint, method, pivot_lang, lang, score_mean, score_max, best_layer,
-- pivot_to_lang_mean, lang_to_pivot_mean, n_layers, n_sentences): the language x language matrix of layer-mean
-- scores and retrieval accuracies, for every pair whose matches are in the lake (the job's pivot, or every pair
-- with `pivots: all`, see scoring.compute_pairs). Per layer: `alignment` / `retrieval` hold every pair too.
-- Grain: (model, checkpoint, method, pivot_lang, lang).
CREATE OR REPLACE VIEW alignment_matrix AS
WITH directions AS (
    SELECT
        model, checkpoint, method, pivot_lang, lang,
        avg(accuracy ORDER BY layer) FILTER (WHERE direction = 'pivot_to_lang') AS pivot_to_lang_mean,
        avg(accuracy ORDER BY layer) FILTER (WHERE direction = 'lang_to_pivot') AS lang_to_pivot_mean
    FROM retrieval
    GROUP BY ALL
)
SELECT
    s.model, s.checkpoint, s.method, s.pivot_lang, s.lang, s.score_mean, s.score_max, s.best_layer,
    d.pivot_to_lang_mean, d.lang_to_pivot_mean, s.n_layers, s.n_sentences
FROM alignment_summary AS s
JOIN directions AS d USING (model, checkpoint, method, pivot_lang, lang);
