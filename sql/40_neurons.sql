-- Language-specific neurons (LAPE, Tang et al. 2024) from the per-language neuron counters.
-- Answers: "how often does each FFN neuron fire in each language, and which neurons fire for one language only?"

-- neuron_activation: activation probability p(lang, layer, neuron) = tokens with activation > 0 / tokens.
CREATE OR REPLACE VIEW neuron_activation AS
SELECT
    model, checkpoint, lang, CAST(layer AS INTEGER) AS layer, neuron,
    n_active / n_tokens AS activation_prob,
    abs_sum / n_tokens AS mean_abs_activation,
    n_tokens
FROM neuron_counts;

-- neuron_entropy: entropy of a neuron's activation probabilities normalised over languages; low entropy means
-- the neuron fires for few languages. top_lang is the language where it fires most.
CREATE OR REPLACE VIEW neuron_entropy AS
WITH shares AS (
    SELECT
        *,
        activation_prob / nullif(sum(activation_prob) OVER (PARTITION BY model, checkpoint, layer, neuron), 0) AS share
    FROM neuron_activation
)
SELECT
    model, checkpoint, layer, neuron,
    -sum(CASE WHEN share > 0 THEN share * ln(share) ELSE 0 END) AS entropy,
    max(activation_prob) AS max_prob,
    arg_max(lang, activation_prob) AS top_lang,
    CAST(count(*) AS INTEGER) AS n_languages
FROM shares
GROUP BY ALL;

-- language_specific_neurons: LAPE's selection with its defaults: among neurons whose top activation probability
-- is above the 95th percentile of all probabilities, the 1% with the lowest entropy; each is assigned to the
-- languages where its probability is above that percentile.
CREATE OR REPLACE VIEW language_specific_neurons AS
WITH bar AS (
    SELECT model, checkpoint, quantile_cont(activation_prob, 0.95) AS prob_bar
    FROM neuron_activation
    GROUP BY ALL
),
candidates AS (
    SELECT e.*, b.prob_bar
    FROM neuron_entropy AS e
    JOIN bar AS b USING (model, checkpoint)
    WHERE e.max_prob > b.prob_bar AND e.n_languages > 1
),
ranked AS (
    SELECT *, percent_rank() OVER (PARTITION BY model, checkpoint ORDER BY entropy) AS entropy_rank
    FROM candidates
)
SELECT r.model, r.checkpoint, r.layer, r.neuron, a.lang, r.entropy, a.activation_prob
FROM ranked AS r
JOIN neuron_activation AS a USING (model, checkpoint, layer, neuron)
WHERE r.entropy_rank <= 0.01 AND a.activation_prob > r.prob_bar;
