-- Hits: what the score views need from `matches`, counted per layer and per sentence.
-- Answers: "per layer (or per sentence), how many mutual-NN hits, retrieval hits and top-k partners are there?"
--
-- `matches` holds one row per (pivot, language, method, layer, sentence): at FLORES scale or across a training
-- run, tens of millions of rows. Every score is a count over it, so the views below count once. When a
-- checkpoint is compacted (neuronxa_ray/lake/compaction.py) these same views are evaluated over its merged
-- matches and stored beside them, as the tables layer_hits and sentence_hits, named by the same completion
-- markers; connect() binds `_stored_layer_hits` / `_stored_sentence_hits` to those files and `_matches_live` to the
-- matches files no stored hits cover yet (languages written since the last compaction). Each view below is the
-- stored rows plus the same counts over the live rows: the answers are identical whatever is compacted. The
-- intervals of alignment_interval (25_intervals.sql, at its defaults) are stored the same way.

-- layer_hits_of(matches_view): per layer, the counts behind alignment, retrieval and retrieval_ranks.
-- Grain: (model, checkpoint, pivot_lang, lang, method, layer).
CREATE OR REPLACE MACRO layer_hits_of(matches_view) AS TABLE
SELECT
    model, checkpoint, pivot_lang, lang, method, CAST(layer AS SMALLINT) AS layer,
    CAST(count(*) AS INTEGER) AS n_sentences,
    CAST(count(*) FILTER (WHERE row_hit AND column_hit) AS INTEGER) AS mutual_hits,
    CAST(count(*) FILTER (WHERE row_hit) AS INTEGER) AS pivot_to_lang_hits,
    CAST(count(*) FILTER (WHERE column_hit) AS INTEGER) AS lang_to_pivot_hits,
    CAST(count(*) FILTER (WHERE row_rank <= 1) AS INTEGER) AS pivot_to_lang_top1,
    CAST(count(*) FILTER (WHERE row_rank <= 5) AS INTEGER) AS pivot_to_lang_top5,
    CAST(count(*) FILTER (WHERE row_rank <= 10) AS INTEGER) AS pivot_to_lang_top10,
    CAST(count(*) FILTER (WHERE column_rank <= 1) AS INTEGER) AS lang_to_pivot_top1,
    CAST(count(*) FILTER (WHERE column_rank <= 5) AS INTEGER) AS lang_to_pivot_top5,
    CAST(count(*) FILTER (WHERE column_rank <= 10) AS INTEGER) AS lang_to_pivot_top10,
    coalesce(sum(1.0::DOUBLE / row_rank ORDER BY sentence), 0.0) AS pivot_to_lang_rr_sum,  -- ordered: the same
    coalesce(sum(1.0::DOUBLE / column_rank ORDER BY sentence), 0.0) AS lang_to_pivot_rr_sum  -- bits every query
FROM query_table(matches_view)
GROUP BY ALL;

-- sentence_hits_of(matches_view): per sentence, over its layers, the mutual-NN hits (alignment), row hits
-- (pivot -> lang retrieval) and column hits (lang -> pivot): what the bootstrap intervals resample.
-- Grain: (model, checkpoint, pivot_lang, lang, method, sentence).
CREATE OR REPLACE MACRO sentence_hits_of(matches_view) AS TABLE
SELECT
    model, checkpoint, pivot_lang, lang, method, sentence,
    CAST(count(*) FILTER (WHERE row_hit AND column_hit) AS INTEGER) AS mutual_hits,
    CAST(count(*) FILTER (WHERE row_hit) AS INTEGER) AS pivot_to_lang_hits,
    CAST(count(*) FILTER (WHERE column_hit) AS INTEGER) AS lang_to_pivot_hits,
    CAST(count(*) AS INTEGER) AS n_layers
FROM query_table(matches_view)
GROUP BY ALL;

-- layer_hits(model, checkpoint, pivot_lang, lang, method, layer, n_sentences, mutual_hits, pivot_to_lang_hits,
-- lang_to_pivot_hits, pivot_to_lang_top1, pivot_to_lang_top5, pivot_to_lang_top10, lang_to_pivot_top1,
-- lang_to_pivot_top5, lang_to_pivot_top10, pivot_to_lang_rr_sum, lang_to_pivot_rr_sum): top-k counts sentences
-- whose partner ranks <= k (a zero/NaN state has no rank: never counted); rr_sum sums 1 / rank.
-- Grain: (model, checkpoint, pivot_lang, lang, method, layer).
CREATE OR REPLACE VIEW layer_hits AS
SELECT * FROM _stored_layer_hits
UNION ALL BY NAME
SELECT * FROM layer_hits_of('_matches_live');

-- The sentence hits of the live matches alone (alignment_interval adds their intervals to the stored ones).
CREATE OR REPLACE VIEW _live_sentence_hits AS SELECT * FROM sentence_hits_of('_matches_live');

-- sentence_hits(model, checkpoint, pivot_lang, lang, method, sentence, mutual_hits, pivot_to_lang_hits,
-- lang_to_pivot_hits, n_layers). Grain: (model, checkpoint, pivot_lang, lang, method, sentence).
CREATE OR REPLACE VIEW sentence_hits AS
SELECT * FROM _stored_sentence_hits
UNION ALL BY NAME
SELECT * FROM _live_sentence_hits;

