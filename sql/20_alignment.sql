-- Alignment and retrieval: mutual nearest neighbours over the cosine matrices (MEXA / NeuronXA).
-- Answers: "per layer, what share of parallel pairs find each other?" A hit at i needs C[i,i] strictly
-- greater than every other value of row i (pivot -> lang retrieval) and of column i (lang -> pivot).
-- Ties are misses; a NULL (zero or NaN state) diagonal never hits, a NULL rival never wins.

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

CREATE OR REPLACE MACRO alignment_of(cells_view) AS TABLE
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer,
    avg(CASE WHEN row_hit AND column_hit THEN 1.0 ELSE 0.0 END) AS score,
    CAST(count(*) AS INTEGER) AS n_sentences
FROM mutual_nn(cells_view)
GROUP BY ALL;

CREATE OR REPLACE VIEW mutual_nn AS SELECT * FROM mutual_nn('similarity_cells');

-- alignment(model, checkpoint, method, pivot, lang, layer, score, n_sentences)
CREATE OR REPLACE VIEW alignment AS SELECT * FROM alignment_of('similarity_cells');

-- The same score for any pivot, from stored states (SELECT ... WHERE pivot = 'ita').
CREATE OR REPLACE VIEW alignment_from_states AS SELECT * FROM alignment_of('state_similarity_cells');

-- retrieval(model, checkpoint, method, pivot, lang, layer, direction, accuracy)
CREATE OR REPLACE VIEW retrieval AS
WITH directions AS (
    SELECT model, checkpoint, method, pivot_lang, lang, layer, 'pivot_to_lang' AS direction, row_hit AS hit
    FROM mutual_nn
    UNION ALL
    SELECT model, checkpoint, method, pivot_lang, lang, layer, 'lang_to_pivot' AS direction, column_hit AS hit
    FROM mutual_nn
)
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer, direction,
    avg(CASE WHEN hit THEN 1.0 ELSE 0.0 END) AS accuracy
FROM directions
GROUP BY ALL;

-- alignment_summary(model, checkpoint, method, pivot, lang, score_mean, score_max, best_layer)
-- score_mean is the paper's layer-mean score; best_layer is the lowest layer reaching score_max.
CREATE OR REPLACE VIEW alignment_summary AS
WITH per_language AS (
    SELECT
        model, checkpoint, method, pivot_lang, lang,
        avg(score) AS score_mean,
        max(score) AS score_max,
        CAST(count(*) AS INTEGER) AS n_layers,
        max(n_sentences) AS n_sentences
    FROM alignment
    GROUP BY ALL
)
SELECT
    s.model, s.checkpoint, s.method, s.pivot_lang, s.lang, s.score_mean, s.score_max,
    (SELECT min(a.layer) FROM alignment AS a
      WHERE a.model = s.model AND a.checkpoint = s.checkpoint AND a.method = s.method
        AND a.pivot_lang = s.pivot_lang AND a.lang = s.lang AND a.score = s.score_max) AS best_layer,
    s.n_layers, s.n_sentences
FROM per_language AS s;
