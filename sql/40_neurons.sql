-- Language-specific neurons (LAPE, Tang et al. 2024) and neuron overlap between languages, from the
-- per-language neuron counters.
-- Answers: "how often does each FFN neuron fire in each language, which neurons fire for few languages only
-- (LAPE's selection, exactly as the authors' identify.py makes it), and how many active neurons do two languages
-- share per layer and checkpoint?"

-- neuron_activation: activation probability p(lang, layer, neuron) = tokens with activation > 0 / tokens.
CREATE OR REPLACE VIEW neuron_activation AS
SELECT
    model, checkpoint, lang, CAST(layer AS INTEGER) AS layer, neuron,
    n_active / n_tokens AS activation_prob,
    abs_sum / n_tokens AS mean_abs_activation,
    n_tokens
FROM neuron_counts;

-- neuron_entropy: entropy of a neuron's activation probabilities normalised over languages (LAPE's entropy;
-- a neuron that never fires has entropy 0, as identify.py's NaN -> 0); low entropy means the neuron fires for
-- few languages. top_lang is the language where it fires most (the first in name order on a tie). Sums run in
-- language order (ORDER BY inside the aggregate): a parallel sum's order, hence its last bit, could change
-- between runs, and equal entropies must stay equal for LAPE's tie order to hold.
CREATE OR REPLACE VIEW neuron_entropy AS
WITH totals AS (
    SELECT
        model, checkpoint, layer, neuron,
        sum(activation_prob ORDER BY lang) AS total,
        max(activation_prob) AS max_prob,
        first(lang ORDER BY activation_prob DESC, lang) AS top_lang,
        CAST(count(*) AS INTEGER) AS n_languages
    FROM neuron_activation
    GROUP BY ALL
),
shares AS (
    SELECT a.model, a.checkpoint, a.layer, a.neuron, a.lang, a.activation_prob / nullif(t.total, 0) AS share
    FROM neuron_activation AS a
    JOIN totals AS t USING (model, checkpoint, layer, neuron)
),
entropies AS (
    SELECT
        model, checkpoint, layer, neuron,
        -sum(CASE WHEN share > 0 THEN share * ln(share) ELSE 0 END ORDER BY lang) AS entropy
    FROM shares
    GROUP BY ALL
)
SELECT e.model, e.checkpoint, e.layer, e.neuron, e.entropy, t.max_prob, t.top_lang, t.n_languages
FROM entropies AS e
JOIN totals AS t USING (model, checkpoint, layer, neuron);

-- lape_thresholds(...): the order statistics and counts of steps 1 and 3 per model and checkpoint: n_probs
-- (|P|), filter_k and filter_bar, activation_k and activation_bar (k and the k-th smallest probability),
-- n_neurons (layers x neurons), n_candidates (neurons passing the filter) and n_top (neurons taken).
CREATE OR REPLACE MACRO lape_thresholds(filter_rate := 0.95, top_rate := 0.01, activation_bar_ratio := 0.95) AS TABLE
WITH ordered AS (
    SELECT
        model, checkpoint, activation_prob,
        row_number() OVER (PARTITION BY model, checkpoint ORDER BY activation_prob) AS k,
        count(*) OVER (PARTITION BY model, checkpoint) AS n_probs
    FROM neuron_activation
),
ranks AS (
    SELECT DISTINCT
        model, checkpoint, n_probs,
        CAST(round_even(CAST(n_probs AS DOUBLE) * CAST(filter_rate AS DOUBLE), 0) AS BIGINT) AS filter_k,
        CAST(round_even(CAST(n_probs AS DOUBLE) * CAST(activation_bar_ratio AS DOUBLE), 0) AS BIGINT) AS activation_k
    FROM ordered
),
bars AS (
    SELECT
        r.model, r.checkpoint, r.n_probs, r.filter_k,
        (SELECT o.activation_prob FROM ordered AS o
          WHERE o.model = r.model AND o.checkpoint = r.checkpoint AND o.k = r.filter_k) AS filter_bar,
        r.activation_k,
        (SELECT o.activation_prob FROM ordered AS o
          WHERE o.model = r.model AND o.checkpoint = r.checkpoint AND o.k = r.activation_k) AS activation_bar
    FROM ranks AS r
),
neurons AS (
    SELECT e.model, e.checkpoint, count(*) AS n_neurons, count(*) FILTER (WHERE e.max_prob > b.filter_bar) AS n_candidates
    FROM neuron_entropy AS e
    JOIN bars AS b USING (model, checkpoint)
    GROUP BY ALL
)
SELECT
    b.model, b.checkpoint, b.n_probs, b.filter_k, b.filter_bar, b.activation_k, b.activation_bar,
    n.n_neurons, n.n_candidates,
    CAST(round_even(CAST(n.n_neurons AS DOUBLE) * CAST(top_rate AS DOUBLE), 0) AS BIGINT) AS n_top
FROM bars AS b
JOIN neurons AS n USING (model, checkpoint);

-- lape_neurons(filter_rate, top_rate, activation_bar_ratio): LAPE's selection (identify.py, `activation()`),
-- step by step, per model and checkpoint, over all layers stacked as the original does:
--   1. P = every activation probability (all layers x neurons x languages), in ascending order; an order
--      statistic at rate q is P's k-th smallest value with k = round(|P| * q) (torch.kthvalue, 1-based; Python's
--      round: halves go to the even integer; the rate multiplies |P| as a double, as in Python).
--   2. filter: a neuron stays a candidate when some language's probability is above the filter_rate order
--      statistic; the others get entropy +inf.
--   3. top: the round(top_rate x ALL neurons) neurons of lowest entropy (torch.topk(largest=False)); equal
--      entropies are taken in (layer, neuron) order (topk leaves that order unspecified). When fewer candidates
--      exist, the rest are taken from the +inf neurons in the same order, as topk does.
--   4. each chosen neuron belongs to every language whose probability is above the activation_bar_ratio order
--      statistic (possibly none, possibly several).
-- One row per (neuron, language) kept, with the neuron's entropy and that language's probability.
CREATE OR REPLACE MACRO lape_neurons(filter_rate := 0.95, top_rate := 0.01, activation_bar_ratio := 0.95) AS TABLE
WITH bars AS (
    SELECT * FROM lape_thresholds(
        filter_rate := filter_rate, top_rate := top_rate, activation_bar_ratio := activation_bar_ratio)
),
ranked AS (
    SELECT
        e.model, e.checkpoint, e.layer, e.neuron, e.entropy, b.activation_bar, b.n_top,
        row_number() OVER (
            PARTITION BY e.model, e.checkpoint
            ORDER BY CASE WHEN e.max_prob > b.filter_bar THEN e.entropy ELSE 'inf'::DOUBLE END, e.layer, e.neuron
        ) AS position
    FROM neuron_entropy AS e
    JOIN bars AS b USING (model, checkpoint)
)
SELECT r.model, r.checkpoint, r.layer, r.neuron, a.lang, r.entropy, a.activation_prob
FROM ranked AS r
JOIN neuron_activation AS a USING (model, checkpoint, layer, neuron)
WHERE r.position <= r.n_top AND a.activation_prob > r.activation_bar;

-- language_specific_neurons(model, checkpoint, layer, neuron, lang, entropy, activation_prob): LAPE with its
-- defaults (filter_rate 0.95, top_rate 0.01, activation_bar_ratio 0.95; Tang et al. 2024 keep the 1% of
-- lowest-entropy neurons). Other thresholds: SELECT * FROM lape_neurons(top_rate := 0.05).
CREATE OR REPLACE VIEW language_specific_neurons AS SELECT * FROM lape_neurons();

-- neuron_overlap_at(threshold): per model, checkpoint and layer, for every ordered pair of languages, the
-- neurons active for each (activation probability > threshold) and for both, and their Jaccard index
-- n_both / (n_a + n_b - n_both) (NULL when neither has an active neuron). Both orders of a pair are listed, so
-- `WHERE lang_a = 'eng'` gives English against every language. Per checkpoint, so its change across training
-- can be followed (Wang et al. 2024, "Probing the Emergence of Cross-lingual Alignment during LLM Training").
CREATE OR REPLACE MACRO neuron_overlap_at(threshold := 0.5) AS TABLE
WITH languages AS (
    SELECT DISTINCT model, checkpoint, layer, lang FROM neuron_activation
),
active AS (
    SELECT model, checkpoint, layer, neuron, lang
    FROM neuron_activation
    WHERE activation_prob > threshold
),
sizes AS (
    SELECT l.model, l.checkpoint, l.layer, l.lang, count(a.neuron) AS n_active
    FROM languages AS l
    LEFT JOIN active AS a USING (model, checkpoint, layer, lang)
    GROUP BY ALL
),
shared AS (
    SELECT a.model, a.checkpoint, a.layer, a.lang AS lang_a, b.lang AS lang_b, count(*) AS n_both
    FROM active AS a
    JOIN active AS b
      ON a.model = b.model AND a.checkpoint = b.checkpoint AND a.layer = b.layer AND a.neuron = b.neuron
     AND a.lang <> b.lang
    GROUP BY ALL
)
SELECT
    x.model, x.checkpoint, x.layer, x.lang AS lang_a, y.lang AS lang_b,
    coalesce(s.n_both, 0) / nullif(x.n_active + y.n_active - coalesce(s.n_both, 0), 0) AS jaccard,
    CAST(x.n_active AS INTEGER) AS n_a, CAST(y.n_active AS INTEGER) AS n_b,
    CAST(coalesce(s.n_both, 0) AS INTEGER) AS n_both
FROM sizes AS x
JOIN sizes AS y
  ON x.model = y.model AND x.checkpoint = y.checkpoint AND x.layer = y.layer AND x.lang <> y.lang
LEFT JOIN shared AS s
  ON s.model = x.model AND s.checkpoint = x.checkpoint AND s.layer = x.layer
 AND s.lang_a = x.lang AND s.lang_b = y.lang;

-- neuron_overlap(model, checkpoint, layer, lang_a, lang_b, jaccard, n_a, n_b, n_both): active = fires on more
-- than half of the language's tokens (threshold 0.5). A fixed majority rule, not a quantile of the lake, so a
-- neuron's status does not move with the other neurons, languages or checkpoints in the lake, and overlaps stay
-- comparable across training. Other thresholds: SELECT * FROM neuron_overlap_at(threshold := 0.8).
CREATE OR REPLACE VIEW neuron_overlap AS SELECT * FROM neuron_overlap_at();
