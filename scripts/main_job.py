"""The main job: scVI end to end on real data, writing the latent space, the trained model and
a picture (training curves and the latent space).

Default data: ``cellvi.datasets.pbmc_small()`` (ships with cellvi; the same cells as
``SeuratObject::pbmc_small``). Any .h5ad with raw counts works with ``--data``.

    python scripts/main_job.py --out out/
    python scripts/main_job.py --data ../shared/data/kang_se_12261.h5ad --batch-key sample_id \
        --color cluster_id --max-epochs 50
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help=".h5ad with raw counts (default: shipped pbmc_small)")
    parser.add_argument("--batch-key", default=None)
    parser.add_argument("--color", default=None, help="obs column to colour the latent plot by")
    parser.add_argument("--max-epochs", type=int, default=None, help="default: cellvi's heuristic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out")
    args = parser.parse_args()

    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import cellvi
    import cellvi.datasets

    cellvi.settings.seed = args.seed
    os.makedirs(args.out, exist_ok=True)
    if args.data:
        adata = anndata.read_h5ad(args.data)
        color = args.color
    else:
        adata = cellvi.datasets.pbmc_small()
        color = args.color or "RNA_snn_res.1"
    print(f"data: {adata.n_obs} cells x {adata.n_vars} genes")

    cellvi.SCVI.setup_anndata(adata, batch_key=args.batch_key)
    model = cellvi.SCVI(adata)
    start = time.time()
    model.train(max_epochs=args.max_epochs)
    seconds = time.time() - start
    history = model.history
    print(f"trained {len(history)} epochs in {seconds:.1f} s; "
          f"final ELBO per cell: train {history['elbo_train'].iloc[-1]:.2f}, "
          f"validation {history['elbo_validation'].iloc[-1]:.2f}")

    latent = model.get_latent_representation()
    np.savetxt(os.path.join(args.out, "latent.csv"), latent, delimiter=",",
               header=",".join(f"scVI_{i + 1}" for i in range(latent.shape[1])), comments="")
    adata.obs_names.to_series().to_csv(os.path.join(args.out, "latent_cells.csv"), index=False)
    model.save(os.path.join(args.out, "scvi_model"), overwrite=True)
    print(f"marginal log-likelihood per cell (validation cells): "
          f"{model.get_marginal_ll(indices=model.validation_indices, n_mc_samples=100):.2f}")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(history.index + 1, history["elbo_train"], label="train")
    ax1.plot(history.index + 1, history["elbo_validation"], label="validation")
    ax1.set(xlabel="epoch", ylabel="ELBO per cell", title="Training curve")
    ax1.legend()
    centred = latent - latent.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    groups = adata.obs[color].astype(str) if color else None
    if groups is not None:
        for g in sorted(groups.unique()):
            sel = (groups == g).to_numpy()
            ax2.scatter(pcs[sel, 0], pcs[sel, 1], s=8, label=g)
        ax2.legend(title=color, fontsize=7, markerscale=2)
    else:
        ax2.scatter(pcs[:, 0], pcs[:, 1], s=8)
    ax2.set(xlabel="PC 1 of scVI latent", ylabel="PC 2", title="scVI latent space")
    fig.tight_layout()
    picture = os.path.join(args.out, "scvi_main.png")
    fig.savefig(picture, dpi=120)
    print(f"wrote {args.out}/latent.csv, {args.out}/scvi_model/, {picture}")


if __name__ == "__main__":
    main()
