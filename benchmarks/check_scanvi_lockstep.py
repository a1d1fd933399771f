"""Lockstep check of scANVI training, cellvi against scvi-tools (issue 17): the same weights,
the same minibatches, the same random draws, step by step.

scvi-tools trains a SCANVI from its SCVI with its own trainer; a hook records each step's
minibatches (full and labelled), KL weight and loss, and seeds torch's global generator before
the step. cellvi's SCANVI starts from the same weights (VAE and scANVI layers copied) and
replays those steps with its module and an Adam of the same settings, the generator seeded the
same way. cellvi's dropout and reparameterised draws are switched to torch's own (``F.dropout``,
``Tensor.normal_``), which is what scvi-tools calls, so that both draw the same numbers in the
same order. If the two modules and optimizers are the same computation, the losses agree to
float rounding at every step; the first step where they part says where they differ.

Also printed: what scvi-tools' trainer fed (steps per epoch, full and labelled minibatch sizes,
KL weights), to compare with cellvi's Trainer.

    benchmarks/.venv-scvi/bin/python benchmarks/check_scanvi_lockstep.py --epochs 20,3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scvi_for_worker  # noqa: E402
from bench_scanvi_crossover import copy_scanvi_layers, copy_vae  # noqa: E402
from bench_scanvi_crosstech import UNKNOWN, ZEISEL_CASE, add_case_arguments, build  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_arguments(p, ZEISEL_CASE)
    p.add_argument("--epochs", default="20,3", help="SCVI epochs (scvi-tools), then SCANVI epochs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main():
    import numpy as np
    import torch
    import torch.nn.functional as F

    import cellvi
    import cellvi.modules._scanvae as scanvae_mod
    import cellvi.modules._vae as vae_mod
    import cellvi.nn._layers as layers_mod

    args = parse_args()
    torch.set_num_threads(1)
    e1, e2 = (int(v) for v in args.epochs.split(","))
    reference, _ = build(args, args.seed)
    scvi = scvi_for_worker(args.seed, 1)
    ref_s, ref_c = reference.copy(), reference.copy()
    scvi.model.SCVI.setup_anndata(ref_s, batch_key="batch", labels_key="labels")
    cellvi.SCVI.setup_anndata(ref_c, batch_key="batch", labels_key="labels")
    scvi_s = scvi.model.SCVI(ref_s)
    scvi_s.train(max_epochs=e1, accelerator="cpu", enable_progress_bar=False)
    scanvi_s = scvi.model.SCANVI.from_scvi_model(scvi_s, UNKNOWN)

    scvi_c = cellvi.SCVI(ref_c)
    copy_vae(scvi_s.module, scvi_c.module, to_cellvi=True)
    scvi_c.is_trained = True
    scanvi_c = cellvi.SCANVI.from_scvi_model(scvi_c, UNKNOWN)
    copy_scanvi_layers(scanvi_s.module, scanvi_c.module, to_cellvi=True)
    copy_vae(scanvi_s.module, scanvi_c.module, to_cellvi=True)  # BatchNorm statistics included

    # label codes must mean the same types in both
    s_map = scanvi_s.adata_manager.get_state_registry("labels").categorical_mapping
    c_map = list(scanvi_c.registry.label_categories)
    print("label codes: scvi-tools", list(s_map), "cellvi", c_map)

    # rows of the dense reference -> cell index (to find scvi-tools' minibatches in cellvi's data)
    dense = np.asarray(reference.X.toarray(), dtype=np.float32)
    row_of = {dense[i].tobytes(): i for i in range(dense.shape[0])}
    assert len(row_of) == dense.shape[0], "duplicate cells: rows cannot be matched"

    # -- scvi-tools' run, recorded ----------------------------------------------------------------
    from scvi.train import SemiSupervisedTrainingPlan

    steps = []
    original = SemiSupervisedTrainingPlan.training_step

    def recording_step(self, batch, batch_idx):
        full, labelled = batch
        rec = {"full": [row_of[r.tobytes()] for r in full["X"].numpy()],
               "labelled": [row_of[r.tobytes()] for r in labelled["X"].numpy()],
               "labels": labelled["labels"].view(-1).long().tolist(),
               "kl_weight": float(self.kl_weight), "epoch": self.current_epoch}
        torch.manual_seed(10_000 + len(steps))
        loss = original(self, batch, batch_idx)
        rec["loss"] = float(loss.detach())
        steps.append(rec)
        return loss

    SemiSupervisedTrainingPlan.training_step = recording_step
    start_state = {k: v.clone() for k, v in scanvi_c.module.state_dict().items()}
    scanvi_s.train(max_epochs=e2, accelerator="cpu", enable_progress_bar=False)
    SemiSupervisedTrainingPlan.training_step = original

    per_epoch = np.bincount([s["epoch"] for s in steps])
    print(f"scvi-tools: {len(steps)} steps ({per_epoch.tolist()} per epoch); full minibatch sizes "
          f"{sorted(set(len(s['full']) for s in steps))}; labelled sizes {sorted(set(len(s['labelled']) for s in steps))}; "
          f"kl weights {steps[0]['kl_weight']:.4g} .. {steps[-1]['kl_weight']:.4g}")
    train_cells = sorted(set(i for s in steps for i in s["full"]))
    lab_cells = sorted(set(i for s in steps for i in s["labelled"]))
    print(f"cells seen: {len(train_cells)} training, {len(lab_cells)} labelled; "
          f"labelled among training: {len(set(lab_cells) & set(train_cells))}")

    # -- cellvi replays them ------------------------------------------------------------------------
    def dropout(self, x):
        return F.dropout(x, self.p, self.training)

    def rsample(mean, var, sample_shape=()):
        eps = torch.empty(*sample_shape, *mean.shape, dtype=mean.dtype).normal_()
        return mean + eps * var.sqrt()

    layers_mod.Dropout.forward = dropout
    vae_mod._rsample = rsample
    scanvae_mod._rsample = rsample

    module = scanvi_c.module
    module.load_state_dict(start_state)
    module.train()
    data = scanvi_c._data()
    codes = scanvi_c._tensors().labels
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3, eps=0.01, weight_decay=1e-6)
    worst = 0.0
    for k, s in enumerate(steps):
        assert [int(codes[i]) for i in s["labelled"]] == s["labels"], "label codes differ"
        torch.manual_seed(10_000 + k)
        tensors = data.minibatch(torch.as_tensor(s["full"]))
        labelled = data.minibatch(torch.as_tensor(s["labelled"]))
        _, _, out = module(tensors, kl_weight=s["kl_weight"], labelled_tensors=labelled)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        rel = abs(float(out.loss) - s["loss"]) / abs(s["loss"])
        worst = max(worst, rel)
        if k < 5 or k % 10 == 0 or rel > 1e-3:
            print(f"step {k:3d} epoch {s['epoch']}: loss scvi-tools {s['loss']:.5f} cellvi {float(out.loss):.5f} "
                  f"(relative difference {rel:.2e})")
        if rel > 1e-2:
            print("the runs parted here")
            break
    print(f"largest relative loss difference over {k + 1} steps: {worst:.2e}")
    # final weights of the classifier
    s_out = scanvi_s.module.classifier.classifier[1].weight.detach()
    c_out = module.classifier.output.weight.detach()
    print(f"classifier output weights, largest difference {float((s_out - c_out).abs().max()):.2e} "
          f"(scale {float(s_out.abs().max()):.2e})")


if __name__ == "__main__":
    main()
