"""Which SAE features track which musical concepts: streamed feature statistics, feature
discovery, label selectivity, linear probes, cosine similarity, acoustic grounding and the
HTML report. Modules: `stats` (streaming), `labels` (selectivity, cosine, discovery),
`validity` (held-out split, max-statistic null, BH, position flags, decoder matching),
`probes` (k-fold logistic regression), `report` (HTML), `browser` (the static feature
browser: what each page shows) with `browser_html` (its pages), `pipeline` (`analyze`), `labelers`
(feature labels from words, CLAP and an LLM, scored by detection: labels.json).
"""
from musicsae_jax.analysis.stats import AnalysisError, Encoder, FeatureStats, feature_stats, \
    prompt_means, sae_from_params
from musicsae_jax.analysis.labels import auroc, discover, label_cosine, label_vector, \
    selectivity, top_features_per_label, word_label
from musicsae_jax.analysis.probes import cross_validate, stratified_folds
from musicsae_jax.analysis.validity import auroc_null, bh_qvalues, heldout_split, \
    match_decoders, position_flags
from musicsae_jax.analysis.pipeline import analyze, seed_stability, selected_features
