"""Names defined once: registry fields, tensor keys and save-file names."""

# Keys of the minibatch tensor dict (also the registry's field names).
X_KEY = "X"
BATCH_KEY = "batch"
LABELS_KEY = "labels"
SIZE_FACTOR_KEY = "size_factor"
CAT_COVS_KEY = "categorical_covariates"
CONT_COVS_KEY = "continuous_covariates"
PROTEIN_KEY = "proteins"  # totalVI: protein counts (cells x proteins), dense
PANEL_KEY = "panel"  # totalVI: the protein panel of each cell (codes); default: its batch
CELL_INDEX_KEY = "cell_index"  # position of the cell in its AnnData (models with per-cell parameters)
# Non-zero entries of a sparse field's minibatch: flat index (row * n_columns + col) and
# value, under "<field>_nz_index" / "<field>_nz_value" (see nz_keys).
X_NZ_INDEX_KEY = "X_nz_index"
X_NZ_VALUE_KEY = "X_nz_value"


def nz_keys(field: str) -> tuple[str, str]:
    """Minibatch keys of the non-zero entries (flat index, value) of a sparse field."""
    return f"{field}_nz_index", f"{field}_nz_value"

# Files of a saved model directory.
WEIGHTS_FILE = "weights.npz"
MODEL_JSON_FILE = "model.json"
ARGUMENTS_FILE = "arguments.npz"  # array and table arguments of a model
SPLIT_FILE = "split.npz"  # the training and validation cells of the last train()
# 2: the registry is a list of fields (format 1, a flat dict of the scVI setup, still loads).
SAVE_FORMAT_VERSION = 2
