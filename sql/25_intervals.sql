-- Uncertainty of the layer-mean scores: bootstrap intervals over sentences, and paired differences.
-- Answers: "how sure is this score?" and "did the score really change between two checkpoints (or models)?"
--
-- A layer-mean score (alignment_summary.score_mean, the paper's score) is a mean over layers of shares of hits
-- over the same n sentences, and one sentence's layers are dependent: the bootstrap resamples whole sentences,
-- all their layers at once. Per sentence, `sentence_hits` counts its hits over the layers; the score is
-- sum(hits) / (n x layers) and each resample's score the same sum over n sentences drawn with replacement.
-- sentence_bootstrap / paired_bootstrap (neuronxa_ray/query/intervals.py) draw the sentence positions with
-- numpy.random.default_rng(seed).integers(0, n, size=(resamples, n)): deterministic for a seed, and the same
-- draws for every score over n sentences, so languages and checkpoints over the same sentences are resampled
-- together (paired). Intervals are percentile intervals at `level`; every row states level, resamples and seed.

-- sentence_hits (15_hits.sql): per sentence, over its layers, its hits; the views below resample it.

-- alignment_interval_at(level := 0.95, resamples := 1000, seed := 0): every layer-mean score with its interval.
-- (model, checkpoint, method, pivot_lang, lang, score_mean, score_ci_low, score_ci_high, pivot_to_lang_mean,
-- pivot_to_lang_ci_low, pivot_to_lang_ci_high, lang_to_pivot_mean, lang_to_pivot_ci_low, lang_to_pivot_ci_high,
-- n_layers, n_sentences, level, resamples, seed). score_mean equals alignment_summary's (to rounding), the two
-- *_mean the layer means of retrieval's accuracy (alignment_matrix's pivot_to_lang_mean / lang_to_pivot_mean).
-- alignment_interval_of(hits_view, level, resamples, seed) computes it from a relation shaped as sentence_hits.
-- Grain: (model, checkpoint, method, pivot_lang, lang).
CREATE OR REPLACE MACRO alignment_interval_of(hits_view, level, resamples, seed) AS TABLE
WITH per_language AS (
    SELECT
        model, checkpoint, method, pivot_lang, lang,
        max(n_layers) AS n_layers,
        CAST(count(*) AS INTEGER) AS n_sentences,
        list(mutual_hits ORDER BY sentence) AS mutual,
        list(pivot_to_lang_hits ORDER BY sentence) AS pivot_to_lang,
        list(lang_to_pivot_hits ORDER BY sentence) AS lang_to_pivot
    FROM query_table(hits_view)
    GROUP BY ALL
),
resampled AS (
    SELECT
        *,
        sentence_bootstrap(mutual, n_layers, level, resamples, seed) AS s,
        sentence_bootstrap(pivot_to_lang, n_layers, level, resamples, seed) AS p,
        sentence_bootstrap(lang_to_pivot, n_layers, level, resamples, seed) AS l
    FROM per_language
)
SELECT
    model, checkpoint, method, pivot_lang, lang,
    s.estimate AS score_mean, s.low AS score_ci_low, s.high AS score_ci_high,
    p.estimate AS pivot_to_lang_mean, p.low AS pivot_to_lang_ci_low, p.high AS pivot_to_lang_ci_high,
    l.estimate AS lang_to_pivot_mean, l.low AS lang_to_pivot_ci_low, l.high AS lang_to_pivot_ci_high,
    n_layers, n_sentences,
    CAST(level AS DOUBLE) AS level, CAST(resamples AS INTEGER) AS resamples, CAST(seed AS BIGINT) AS seed
FROM resampled;

CREATE OR REPLACE MACRO alignment_interval_at(level := 0.95, resamples := 1000, seed := 0) AS TABLE
SELECT * FROM alignment_interval_of('sentence_hits', level, resamples, seed);

-- alignment_interval: alignment_interval_at() at its defaults (95%, 1,000 resamples, seed 0), the same rows bit for
-- bit: stored by compaction for compacted checkpoints (the table alignment_interval, beside layer_hits), computed
-- for the sentence hits of live matches (15_hits.sql). Grain: (model, checkpoint, method, pivot_lang, lang).
CREATE OR REPLACE VIEW alignment_interval AS
SELECT * FROM _stored_alignment_interval
UNION ALL BY NAME
SELECT * FROM alignment_interval_of('_live_sentence_hits', 0.95, 1000, 0);

-- language_mean_interval_at(level := 0.95, resamples := 1000, seed := 0): the mean over languages of the
-- layer-mean scores (training_curve's lang '*') with its interval, resampling sentences jointly across languages
-- (sentence i is the same text in every language). Over the sentences that every language of the group has.
-- (model, checkpoint, method, pivot_lang, lang = '*', score_mean, score_ci_low, score_ci_high, the same for
-- pivot_to_lang and lang_to_pivot, n_layers, n_sentences, n_languages, level, resamples, seed).
-- language_mean_interval_of(hits_view, level, resamples, seed): the same from a relation shaped as sentence_hits.
-- Grain: (model, checkpoint, method, pivot_lang).
CREATE OR REPLACE MACRO language_mean_interval_of(hits_view, level, resamples, seed) AS TABLE
WITH per_sentence AS (
    SELECT
        model, checkpoint, method, pivot_lang, sentence,
        CAST(sum(mutual_hits) AS INTEGER) AS mutual_hits,
        CAST(sum(pivot_to_lang_hits) AS INTEGER) AS pivot_to_lang_hits,
        CAST(sum(lang_to_pivot_hits) AS INTEGER) AS lang_to_pivot_hits,
        max(n_layers) AS n_layers,
        CAST(count(*) AS INTEGER) AS n_languages
    FROM query_table(hits_view)
    GROUP BY ALL
),
per_group AS (
    SELECT
        model, checkpoint, method, pivot_lang,
        max(n_layers) AS n_layers,
        max(n_languages) AS n_languages,
        list(n_languages ORDER BY sentence) AS coverage,
        list(mutual_hits ORDER BY sentence) AS mutual,
        list(pivot_to_lang_hits ORDER BY sentence) AS pivot_to_lang,
        list(lang_to_pivot_hits ORDER BY sentence) AS lang_to_pivot
    FROM per_sentence
    GROUP BY ALL
),
complete AS (  -- the sentences every language has (all of them, unless a language was run on fewer)
    SELECT *, [c = n_languages FOR c IN coverage] AS keep FROM per_group
),
resampled AS (
    SELECT
        *,
        sentence_bootstrap(list_where(mutual, keep), n_layers * n_languages, level, resamples, seed) AS s,
        sentence_bootstrap(list_where(pivot_to_lang, keep), n_layers * n_languages, level, resamples, seed) AS p,
        sentence_bootstrap(list_where(lang_to_pivot, keep), n_layers * n_languages, level, resamples, seed) AS l
    FROM complete
)
SELECT
    model, checkpoint, method, pivot_lang, '*' AS lang,
    s.estimate AS score_mean, s.low AS score_ci_low, s.high AS score_ci_high,
    p.estimate AS pivot_to_lang_mean, p.low AS pivot_to_lang_ci_low, p.high AS pivot_to_lang_ci_high,
    l.estimate AS lang_to_pivot_mean, l.low AS lang_to_pivot_ci_low, l.high AS lang_to_pivot_ci_high,
    n_layers, CAST(len([k FOR k IN keep IF k]) AS INTEGER) AS n_sentences, n_languages,
    CAST(level AS DOUBLE) AS level, CAST(resamples AS INTEGER) AS resamples, CAST(seed AS BIGINT) AS seed
FROM resampled;

CREATE OR REPLACE MACRO language_mean_interval_at(level := 0.95, resamples := 1000, seed := 0) AS TABLE
SELECT * FROM language_mean_interval_of('sentence_hits', level, resamples, seed);

-- paired_bootstrap_of(pairs_view, level, resamples, seed): the paired bootstrap over a relation of paired
-- sentences (model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang, lang, sentence, hits_a, hits_b,
-- layers_a, layers_b), per language and as the mean over languages (lang '*': over the sentences that every
-- language of the pair has, resampled jointly across languages). Used by paired_difference and training_change.
-- Grain: (model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang, lang).
CREATE OR REPLACE MACRO paired_bootstrap_of(pairs_view, level, resamples, seed) AS TABLE
WITH paired AS (
    SELECT * FROM query_table(pairs_view)
),
per_language AS (
    SELECT
        model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang, lang,
        1 AS n_languages,
        CAST(count(*) AS INTEGER) AS n_sentences,
        list(hits_a ORDER BY sentence) AS hits_a,
        list(hits_b ORDER BY sentence) AS hits_b,
        max(layers_a) AS denominator_a,
        max(layers_b) AS denominator_b
    FROM paired
    GROUP BY ALL
),
per_sentence AS (
    SELECT
        model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang, sentence,
        CAST(sum(hits_a) AS INTEGER) AS hits_a,
        CAST(sum(hits_b) AS INTEGER) AS hits_b,
        max(layers_a) AS layers_a,
        max(layers_b) AS layers_b,
        CAST(count(*) AS INTEGER) AS n_languages
    FROM paired
    GROUP BY ALL
),
per_group AS (
    SELECT
        model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang,
        max(n_languages) AS n_languages,
        list(n_languages ORDER BY sentence) AS coverage,
        list(hits_a ORDER BY sentence) AS hits_a,
        list(hits_b ORDER BY sentence) AS hits_b,
        max(layers_a) AS layers_a,
        max(layers_b) AS layers_b
    FROM per_sentence
    GROUP BY ALL
),
language_mean AS (  -- the sentences every language of the pair has
    SELECT
        model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang, '*' AS lang, n_languages,
        CAST(len([c FOR c IN coverage IF c = n_languages]) AS INTEGER) AS n_sentences,
        list_where(hits_a, [c = n_languages FOR c IN coverage]) AS hits_a,
        list_where(hits_b, [c = n_languages FOR c IN coverage]) AS hits_b,
        layers_a * n_languages AS denominator_a,
        layers_b * n_languages AS denominator_b
    FROM per_group
),
resampled AS (
    SELECT *, paired_bootstrap(hits_a, hits_b, denominator_a, denominator_b, level, resamples, seed) AS d
    FROM (SELECT * FROM per_language UNION ALL BY NAME SELECT * FROM language_mean)
)
SELECT
    model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang, lang,
    d.score_a, d.score_b, d.difference, d.low AS ci_low, d.high AS ci_high, d.p_value,
    n_languages, n_sentences,
    CAST(level AS DOUBLE) AS level, CAST(resamples AS INTEGER) AS resamples, CAST(seed AS BIGINT) AS seed
FROM resampled;

-- paired_difference(model_a, checkpoint_a, model_b, checkpoint_b, measure := 'alignment', level := 0.95,
-- resamples := 1000, seed := 0): B minus A over the same sentences, per (method, pivot_lang, lang) and as the mean
-- over languages (lang '*'). Two checkpoints of one model, two models, or an intervention (the model
-- `{model} [off {label}]`) against its baseline: any two (model, checkpoint) whose matches share pivot, languages and sentence numbers. measure:
-- alignment (the layer-mean score), pivot_to_lang or lang_to_pivot (layer-mean retrieval accuracy).
-- (model_a, checkpoint_a, model_b, checkpoint_b, method, pivot_lang, lang, score_a, score_b, difference, ci_low,
-- ci_high, p_value, n_languages, n_sentences, level, resamples, seed, measure): difference = score_b - score_a
-- with its paired bootstrap interval (both sides resampled with the same draws) and two-sided p-value.
-- Grain: (method, pivot_lang, lang).
CREATE OR REPLACE MACRO paired_difference(
    model_a, checkpoint_a, model_b, checkpoint_b, measure := 'alignment', level := 0.95, resamples := 1000, seed := 0
) AS TABLE
WITH measured AS (
    SELECT
        model, checkpoint, pivot_lang, lang, method, sentence, n_layers,
        CASE measure
            WHEN 'alignment' THEN mutual_hits
            WHEN 'pivot_to_lang' THEN pivot_to_lang_hits
            WHEN 'lang_to_pivot' THEN lang_to_pivot_hits
            ELSE error('paired_difference: measure ' || measure || ': allowed alignment, pivot_to_lang, lang_to_pivot')
        END AS hits
    FROM sentence_hits
    WHERE (model = model_a AND checkpoint = checkpoint_a) OR (model = model_b AND checkpoint = checkpoint_b)
),
sentence_pairs AS (
    SELECT
        a.model AS model_a, a.checkpoint AS checkpoint_a, b.model AS model_b, b.checkpoint AS checkpoint_b,
        b.method, b.pivot_lang, b.lang, b.sentence,
        a.hits AS hits_a, b.hits AS hits_b, a.n_layers AS layers_a, b.n_layers AS layers_b
    FROM measured AS a
    JOIN measured AS b USING (method, pivot_lang, lang, sentence)
    WHERE a.model = model_a AND a.checkpoint = checkpoint_a AND b.model = model_b AND b.checkpoint = checkpoint_b
)
SELECT *, CAST(measure AS VARCHAR) AS measure
FROM paired_bootstrap_of('sentence_pairs', level, resamples, seed);
