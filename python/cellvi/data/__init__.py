"""The data registry (``setup_anndata``) and the minibatch data path."""
from ._loader import DeviceData, cell_indices, cycle_minibatches, split_minibatches
from ._registry import AnnTensors, Registry

__all__ = ["AnnTensors", "DeviceData", "cell_indices", "Registry", "cycle_minibatches", "split_minibatches"]
