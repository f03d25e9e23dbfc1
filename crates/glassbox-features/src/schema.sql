-- The feature store: one SQLite file (features.sqlite) in a run directory.
-- Written by `glassbox features build`, read by `glassbox serve` and `features export`.
-- A "unit" is a dictionary feature (kind = 'feature') or, for the polysemanticity
-- baseline, an MLP neuron at the same layer (kind = 'neuron').

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL            -- model, hook, neuron_hook, sae_dir, d_sae, d_mlp, tokens,
                                   -- context_size, context_radius, top_k, built_seconds, version
);

CREATE TABLE IF NOT EXISTS units (
    kind          TEXT    NOT NULL,   -- 'feature' | 'neuron'
    id            INTEGER NOT NULL,
    density       REAL    NOT NULL,   -- fraction of evaluated tokens with activation > 0
    max_act       REAL    NOT NULL,
    mean_act      REAL    NOT NULL,   -- mean over the tokens where it fired
    label         TEXT    NOT NULL,   -- short automatic label from its top tokens
    top_tokens    TEXT    NOT NULL,   -- JSON [[token, count], ...] over its top examples
    concentration REAL    NOT NULL,   -- share of top examples whose activating token is the most common one
    histogram     TEXT    NOT NULL,   -- JSON {"log10_edges": [...], "counts": [...]} of positive activations
    PRIMARY KEY (kind, id)
);

CREATE TABLE IF NOT EXISTS examples (
    kind          TEXT    NOT NULL,
    unit          INTEGER NOT NULL,
    band          INTEGER NOT NULL,   -- -1: top activations; 0..: quantile band (0 = lowest)
    rank          INTEGER NOT NULL,   -- order within the band (0 = strongest for top)
    act           REAL    NOT NULL,   -- activation at the example's token
    window        INTEGER NOT NULL,   -- windows.id
    position      INTEGER NOT NULL,   -- the token's position in the window
    context_start INTEGER NOT NULL,   -- first position shown
    acts          TEXT    NOT NULL    -- JSON [activation per shown token, from context_start]
);
CREATE INDEX IF NOT EXISTS examples_by_unit ON examples (kind, unit, band, rank);

CREATE TABLE IF NOT EXISTS windows (
    id     INTEGER PRIMARY KEY,
    tokens TEXT NOT NULL              -- JSON [token string, ...] (decoded pieces, for display)
);

CREATE TABLE IF NOT EXISTS logit_effects (
    feature INTEGER NOT NULL,
    sign    INTEGER NOT NULL,         -- +1: most promoted tokens, -1: most suppressed
    rank    INTEGER NOT NULL,
    token   TEXT    NOT NULL,
    value   REAL    NOT NULL,         -- W_dec[f] · diag(final-norm weight) · W_U, per token
    PRIMARY KEY (feature, sign, rank)
);

CREATE TABLE IF NOT EXISTS neighbours (
    feature INTEGER NOT NULL,
    rank    INTEGER NOT NULL,
    other   INTEGER NOT NULL,
    cosine  REAL    NOT NULL,         -- cosine of decoder rows
    PRIMARY KEY (feature, rank)
);

-- the same for MLP neurons (`feature` is the neuron's id), from each neuron's output
-- weights: W_out[:, n] · diag(final-norm weight) · W_U, and cosines of those columns
CREATE TABLE IF NOT EXISTS neuron_logit_effects (
    feature INTEGER NOT NULL,
    sign    INTEGER NOT NULL,
    rank    INTEGER NOT NULL,
    token   TEXT    NOT NULL,
    value   REAL    NOT NULL,
    PRIMARY KEY (feature, sign, rank)
);

CREATE TABLE IF NOT EXISTS neuron_neighbours (
    feature INTEGER NOT NULL,
    rank    INTEGER NOT NULL,
    other   INTEGER NOT NULL,
    cosine  REAL    NOT NULL,
    PRIMARY KEY (feature, rank)
);

CREATE TABLE IF NOT EXISTS comparison (
    key   TEXT PRIMARY KEY,           -- e.g. feature_mean_concentration, neuron_mean_concentration
    value REAL NOT NULL
);
