"""Global settings: ``cellvi.settings.seed``, ``progress_bar``, ``progress_style``, ``num_threads``,
``backed_window_cells``."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


class Settings:
    """Process-wide settings.

    Examples
    --------
    >>> import cellvi
    >>> cellvi.settings.seed = 0          # runs on the CPU now repeat exactly
    >>> cellvi.settings.progress_bar = False
    >>> cellvi.settings.progress_style = "lines"  # plain lines even in a terminal
    """

    def __init__(self) -> None:
        self._seed: int | None = None
        self.progress_bar: bool = True
        #: How training shows progress: ``"auto"`` (a bar when stderr is a terminal, else a
        #: plain line every ~10% of the epochs, for logs and knitted documents), ``"bar"`` or
        #: ``"lines"``.
        self.progress_style: str = "auto"
        #: Cells per window when training on a backed AnnData (``read_h5ad(path,
        #: backed="r")``): memory holds two windows of counts (the one training and the next,
        #: read ahead meanwhile), ~25 MB each at 100 non-zeros per cell; more cells per window
        #: shuffle better.
        self.backed_window_cells: int = 32768

    @property
    def seed(self) -> int | None:
        """Seed for torch, numpy and ``random``; also seeds data splits and shuffling."""
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        if value is not None:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"seed must be an integer, got {value!r}")
            value = int(value)
            random.seed(value)
            np.random.seed(value % 2**32)
            torch.manual_seed(value)
        self._seed = value

    @contextlib.contextmanager
    def seeded(self, seed: int | None):
        """Within the block, ``seed`` is the setting (seeding torch, numpy and ``random`` as
        setting :attr:`seed` does; ``None``: the setting as it is). Afterwards the setting is
        put back as it was, without seeding anything again (so the draws after the block do
        not repeat those after an earlier seeding).

        Examples
        --------
        >>> with cellvi.settings.seeded(0):
        ...     model.train()
        """
        before = self._seed
        if seed is not None:
            self.seed = seed
        try:
            yield self
        finally:
            self._seed = before

    @property
    def num_threads(self) -> int:
        """Number of CPU threads torch uses."""
        return torch.get_num_threads()

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        torch.set_num_threads(int(value))


settings = Settings()
