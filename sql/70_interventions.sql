-- Neuron interventions: a checkpoint evaluated again with neurons switched off (a job's `interventions:`), stored
-- as a model of its own, `{model} [off {intervention}]`, beside the baseline `{model}` (intervention 'none').
-- Answers: "what does switching off the neurons specific to language X do to each language's perplexity and to
-- its alignment with the pivot, compared with the same checkpoint untouched and with a random control set of the
-- same size, and how does that change over training?"

-- perplexity_summary(model, checkpoint, pivot_lang, lang, base_model, intervention, switched_off, n_neurons,
-- n_sentences, n_predicted, nll_sum, perplexity): exp(total NLL / total predicted tokens) over a language's
-- sentences (the corpus perplexity, not a mean of per-sentence perplexities). Grain: (model, checkpoint, lang).
CREATE OR REPLACE VIEW perplexity_summary AS
SELECT
    model, checkpoint, any_value(pivot_lang) AS pivot_lang, lang,
    any_value(base_model) AS base_model,
    any_value(intervention) AS intervention,
    any_value(switched_off) AS switched_off,
    any_value(n_neurons) AS n_neurons,
    CAST(count(*) AS INTEGER) AS n_sentences,
    sum(n_predicted) AS n_predicted,
    sum(nll_sum ORDER BY sentence) AS nll_sum,
    exp(sum(nll_sum ORDER BY sentence) / nullif(sum(n_predicted), 0)) AS perplexity
FROM perplexity
GROUP BY model, checkpoint, lang;

-- intervention_effect(model, checkpoint, step, intervention, switched_off, n_neurons, pivot_lang, lang,
-- perplexity_none, perplexity, perplexity_ratio, and per method nasca / navca / mexa / mexa_last (the layer-mean
-- score under the intervention) with *_none (the baseline's) and delta_* (intervention minus baseline)): one row per
-- checkpoint, intervention and evaluated language; model is the base model, pivot_lang the job's pivot (its own
-- row has perplexity but no alignment: it is not scored against itself). perplexity_ratio > 1: the language got
-- harder to predict. Grain: (model, checkpoint, intervention, lang).
CREATE OR REPLACE VIEW intervention_effect AS
WITH scores AS (
    SELECT
        model, checkpoint, pivot_lang, lang,
        any_value(score_mean) FILTER (WHERE method = 'nas') AS nasca,
        any_value(score_mean) FILTER (WHERE method = 'nav') AS navca,
        any_value(score_mean) FILTER (WHERE method = 'hidden') AS mexa,
        any_value(score_mean) FILTER (WHERE method = 'hidden_last') AS mexa_last
    FROM alignment_summary
    GROUP BY ALL
),
evaluated AS (
    SELECT p.*, s.nasca, s.navca, s.mexa, s.mexa_last
    FROM perplexity_summary AS p
    LEFT JOIN scores AS s USING (model, checkpoint, pivot_lang, lang)
)
SELECT
    v.base_model AS model, v.checkpoint, r.step, v.intervention, v.switched_off, v.n_neurons, v.pivot_lang, v.lang,
    b.perplexity AS perplexity_none, v.perplexity, v.perplexity / b.perplexity AS perplexity_ratio,
    v.nasca, b.nasca AS nasca_none, v.nasca - b.nasca AS delta_nasca,
    v.navca, b.navca AS navca_none, v.navca - b.navca AS delta_navca,
    v.mexa, b.mexa AS mexa_none, v.mexa - b.mexa AS delta_mexa,
    v.mexa_last, b.mexa_last AS mexa_last_none, v.mexa_last - b.mexa_last AS delta_mexa_last
FROM evaluated AS v
JOIN evaluated AS b
    ON b.model = v.base_model AND b.checkpoint = v.checkpoint AND b.lang = v.lang AND b.pivot_lang = v.pivot_lang
    AND b.intervention = 'none'
LEFT JOIN latest_runs AS r ON r.model = v.base_model AND r.checkpoint = v.checkpoint
WHERE v.intervention <> 'none'
ORDER BY model, r.step NULLS LAST, v.checkpoint, v.intervention, v.lang;

-- intervention_matrix(model, checkpoint, step, kind, intervention, switched_off, lang, perplexity_ratio,
-- perplexity, perplexity_none, delta_nasca, n_neurons): LAPE's "switched-off language x evaluated language"
-- perplexity matrix, per checkpoint (so over training steps too): kind 'lape' for the language-specific neurons of
-- switched_off, 'random' for a control set of the same size per layer (one per seed). Its diagonal
-- (switched_off = lang) is the effect on the language itself. Sets of 'all' languages and files are left out
-- (intervention_effect has them). Grain: (model, checkpoint, intervention, lang).
CREATE OR REPLACE VIEW intervention_matrix AS
SELECT
    model, checkpoint, step, split_part(intervention, ':', 1) AS kind, intervention, switched_off, lang,
    perplexity_ratio, perplexity, perplexity_none, delta_nasca, n_neurons
FROM intervention_effect
WHERE switched_off IS NOT NULL AND switched_off <> 'all'
ORDER BY model, step NULLS LAST, checkpoint, kind, intervention, lang;
