"""Names defined once: registry fields, tensor keys and save-file names."""

# Keys of the minibatch tensor dict (also the registry's field names).
X_KEY = "X"
BATCH_KEY = "batch"
LABELS_KEY = "labels"
SIZE_FACTOR_KEY = "size_factor"
CAT_COVS_KEY = "categorical_covariates"
CONT_COVS_KEY = "continuous_covariates"
# Non-zero entries of the minibatch counts: flat index (row * n_genes + col) and value.
X_NZ_INDEX_KEY = "X_nz_index"
X_NZ_VALUE_KEY = "X_nz_value"

# Files of a saved model directory.
WEIGHTS_FILE = "weights.npz"
MODEL_JSON_FILE = "model.json"
SAVE_FORMAT_VERSION = 1
