-- Languages in the lake, with the canonical code they are matched on.
-- Answers: "which languages does the lake hold, under which codes, and which of them count as the same
-- language?" lang is the code as the data wrote it (from data file names or benchmark files); lang_canonical is
-- canonical_lang(lang) (neuronxa_ray/corpus/languages.py: macrolanguage, no region, script only when unusual); name is
-- the language's English name. Computed at query time, so it never needs rewriting when the lake grows.

CREATE OR REPLACE VIEW languages AS
WITH codes AS (
    SELECT DISTINCT lang FROM similarity
    UNION
    SELECT DISTINCT pivot_lang FROM similarity
    UNION
    SELECT DISTINCT lang FROM neuron_counts
    UNION
    SELECT DISTINCT lang FROM sentence_states
    UNION
    SELECT DISTINCT lang FROM benchmarks
)
SELECT lang, canonical_lang(lang) AS lang_canonical, language_name(lang) AS name
FROM codes;
