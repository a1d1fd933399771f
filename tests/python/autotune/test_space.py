"""Search-space specifications and default spaces (no training)."""
import pytest

import cellvi
from cellvi.autotune import choice, default_search_space, loguniform, randint, uniform
from cellvi.autotune._space import check_space, space_from_json, space_to_json


def test_specs_check_their_arguments():
    assert choice(["nb", "zinb"]).contains("nb") and not choice(["nb"]).contains("poisson")
    assert choice([10, 20]).contains(10.0)  # R sends whole numbers as floats
    assert uniform(0, 1).contains(0.5) and not uniform(0, 1).contains(2)
    assert randint(1, 3).contains(3) and not randint(1, 3).contains(2.5)
    with pytest.raises(ValueError, match="at least one value"):
        choice([])
    with pytest.raises(ValueError, match="low < high"):
        uniform(1, 1)
    with pytest.raises(ValueError, match="low > 0"):
        loguniform(0, 1)
    with pytest.raises(ValueError, match="distinct"):
        choice([1, 1])


def test_space_checks_and_json_round_trip():
    space = {"model_params": {"n_latent": choice([5, 10])}, "train_params": {"lr": loguniform(1e-4, 1e-2)}}
    back = space_from_json(space_to_json(check_space(space)))
    assert back == check_space(space)
    # the JSON form is what R sends
    assert check_space({"train_params": {"lr": {"kind": "loguniform", "low": 1e-4, "high": 1e-2}}})[
        "train_params"]["lr"] == loguniform(1e-4, 1e-2)
    with pytest.raises(ValueError, match="empty"):
        check_space({"model_params": {}, "train_params": {}})
    with pytest.raises(ValueError, match="unknown section"):
        check_space({"model": {"n_latent": choice([5])}})
    with pytest.raises(ValueError, match="both model_params and train_params"):
        check_space({"model_params": {"lr": choice([1e-3])}, "train_params": {"lr": choice([1e-3])}})
    with pytest.raises(ValueError, match="unknown kind"):
        check_space({"train_params": {"lr": {"kind": "normal", "low": 0, "high": 1}}})


def test_default_spaces_are_declared_per_model_and_contain_the_defaults():
    scvi = default_search_space(cellvi.SCVI)
    assert set(scvi["model_params"]) == {"n_hidden", "n_latent", "n_layers", "dropout_rate", "gene_likelihood"}
    assert set(scvi["train_params"]) == {"lr"}
    for name, default in {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "dropout_rate": 0.1,
                          "gene_likelihood": "zinb"}.items():
        assert scvi["model_params"][name].contains(default), name
    assert scvi["train_params"]["lr"].contains(1e-3)
    assert default_search_space(cellvi.LinearSCVI)["model_params"]["gene_likelihood"].contains("nb")
    assert default_search_space(cellvi.SCANVI) == scvi
    assert "n_layers_encoder" in default_search_space(cellvi.TOTALVI)["model_params"]
    assert "n_layers_decoder" in default_search_space(cellvi.PEAKVI)["model_params"]
    # a model without a declared space gets the generic one: the settings it takes
    generic = default_search_space("AUTOZI")
    assert set(generic["model_params"]) == {"n_hidden", "n_latent", "n_layers", "dropout_rate"}
    assert set(default_search_space(cellvi.CellAssign)["model_params"]) == set()
    # the space handed out is a copy: extending it leaves the model's declaration alone
    scvi["model_params"]["n_latent"].values.append(99)
    assert 99 not in default_search_space(cellvi.SCVI)["model_params"]["n_latent"].values
