"""The data registry (``setup_anndata``: a list of fields per model) and the minibatch data path."""
from ._fields import (CategoricalJointObsField, CategoricalObsField, CellIndexField, Field, LayerField,
                      NumericalJointObsField, NumericalObsField, ObsmField)
from ._loader import DeviceData, JointData, cell_indices, cycle_minibatches, split_minibatches
from ._registry import AnnTensors, Registry, standard_fields

__all__ = ["AnnTensors", "CategoricalJointObsField", "CategoricalObsField", "CellIndexField", "DeviceData",
           "Field", "JointData", "LayerField", "NumericalJointObsField", "NumericalObsField", "ObsmField", "Registry",
           "cell_indices", "cycle_minibatches", "split_minibatches", "standard_fields"]
