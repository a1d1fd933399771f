"""One rank of the data-parallel test (tests/python/train/test_distributed.py), run under
torchrun: trains a small SCVI with strategy="ddp" and writes what the test compares."""
import json
import os
import sys

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # helpers
import cellvi  # noqa: E402
from helpers import simulate_counts  # noqa: E402

out_dir, batch_size, max_epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
backed_path = sys.argv[4] if len(sys.argv) > 4 else None  # an h5ad read backed, in small windows
torch.set_num_threads(1)
cellvi.settings.progress_bar = False
cellvi.settings.seed = 0
if backed_path is None:
    adata = simulate_counts(n_cells=300, n_genes=60, batch_strength=0.3)
else:
    import anndata

    import cellvi.data._backed as backed

    backed.BLOCK_CELLS = 16
    cellvi.settings.backed_window_cells = 96  # several windows per epoch
    adata = anndata.read_h5ad(backed_path, backed="r")
    planned = []  # per epoch, the rows of the windows this rank holds
    plan = backed.BackedCSR.plan

    def record_plan(self, windows):
        planned.append(sorted(int(i) for w in windows for i in w))
        plan(self, windows)

    backed.BackedCSR.plan = record_plan
cellvi.SCVI.setup_anndata(adata, batch_key="batch")
model = cellvi.SCVI(adata, n_latent=5)
if os.environ["RANK"] == "1":  # a different start on rank 1: training must begin from rank 0's
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(0.1)

weights_per_step = []


def record(optimizer, args, kwargs):
    with torch.no_grad():
        weights_per_step.append(torch.cat([p.reshape(-1) for p in model.module.parameters()]).double().numpy())


handle = register_optimizer_step_post_hook(record)
model.train(max_epochs=max_epochs, batch_size=batch_size, n_epochs_kl_warmup=2, strategy="ddp")
handle.remove()
rank = torch.distributed.get_rank()
np.save(os.path.join(out_dir, f"weights_rank{rank}.npy"), np.stack(weights_per_step))
np.save(os.path.join(out_dir, f"buffers_rank{rank}.npy"),
        torch.cat([b.reshape(-1).double() for b in model.module.buffers()]).numpy())
model.save(os.path.join(out_dir, f"model_rank{rank}"))
torch.manual_seed(0)
elbo = model.get_elbo(indices=model.validation_indices)
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"history": model.history.to_dict(orient="list"), "elbo": float(elbo), "seed": cellvi.settings.seed,
               "validation": [int(i) for i in model.validation_indices],
               "planned": planned if backed_path is not None else None}, f)
torch.distributed.barrier()  # every rank done before the group goes (gloo can abort otherwise)
torch.distributed.destroy_process_group()
