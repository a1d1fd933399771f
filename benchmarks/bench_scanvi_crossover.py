"""Where does scANVI's cross-technology gap to scvi-tools arise: in the SCVI stage or in the
scANVI stage? A 2 x 2 crossover on the case of ``bench_scanvi_crosstech.py`` (issue 17).

Per seed, four runs, each in its own process: SCVI trained by tool A, its weights copied into
an SCVI model of tool B (the same network: encoder, decoder, dispersion, BatchNorm statistics),
then ``SCANVI.from_scvi_model`` and its training by tool B. A = B are the plain pipelines. With
``--same-init`` the scANVI-only layers (classifier, z2 encoder, z1 decoder) of the cellvi run
also start from the weights scvi-tools draws for them, so that, given the same SCVI weights,
the two scANVI stages differ only in their training (minibatch order, dropout draws).

Measured: accuracy on the hidden reference labels and on the query (per query batch) as the
reference scANVI predicts it (no query training: the gap was there before it), and the kNN
accuracy of the SCVI latent. Comparing rows with the same SCVI tool isolates the scANVI stage;
comparing rows with the same scANVI tool isolates the SCVI stage.

Examples
--------
    benchmarks/.venv-scvi/bin/python benchmarks/bench_scanvi_crossover.py --seeds 0,1 --epochs 5,2
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result, record_section, run_per_seed, scvi_for_worker  # noqa: E402
from bench_scanvi_crosstech import (UNKNOWN, ZEISEL_CASE, add_case_arguments, build,  # noqa: E402
                                    case_arguments, knn_accuracy)

TOOLS = {"c": "cellvi", "s": "scvi-tools"}
VARIANTS = ["".join(p) for p in itertools.product("cs", repeat=2)]  # SCVI tool, scANVI tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_arguments(p, ZEISEL_CASE)
    p.add_argument("--epochs", default="60,15", help="E1,E2: SCVI, SCANVI epochs")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="SCVI tool + scANVI tool, c = cellvi, s = scvi-tools (e.g. cs)")
    p.add_argument("--same-init", action="store_true",
                   help="cellvi's scANVI-only layers start from scvi-tools' initial draw")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--record", action="store_true")
    p.add_argument("--title", default="scANVI crossover: SCVI stage x scANVI stage, cellvi vs scvi-tools (issue 17)")
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--worker")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# -- copying weights between the two implementations ----------------------------------------------
# scvi-tools' FCLayers is ``fc_layers[i] = Sequential(Linear, BatchNorm1d | None, LayerNorm |
# None, ReLU, Dropout)`` whose Linear reads [x, one-hot covariates]; cellvi's is ``layers[i] =
# {linear: CovariateLinear (x part + one table per covariate), post: Sequential(BatchNorm1d,
# ReLU, Dropout)}``. The functions copy scvi-tools -> cellvi when ``to_cellvi`` else back.
def _copy_linear(s_lin, c_lin, to_cellvi: bool) -> None:
    import torch

    inner = getattr(c_lin, "linear", c_lin)
    tables = list(getattr(c_lin, "cat_weights", []))
    # cellvi's sparse-reading first layer keeps its weight transposed (inputs x outputs)
    weight = inner.weight_t.T if hasattr(inner, "weight_t") else inner.weight
    n_in = weight.shape[1]
    with torch.no_grad():
        if to_cellvi:
            weight.copy_(s_lin.weight[:, :n_in])
            inner.bias.copy_(s_lin.bias)
            offset = n_in
            for t in tables:
                t.copy_(s_lin.weight[:, offset:offset + t.shape[0]].T)
                offset += t.shape[0]
            assert offset == s_lin.weight.shape[1], "covariate columns do not match"
        else:
            s_lin.weight.copy_(torch.cat([weight] + [t.T for t in tables], dim=1))
            s_lin.bias.copy_(inner.bias)


def _copy_norm(s_bn, c_bn, to_cellvi: bool) -> None:
    src, dst = (s_bn, c_bn) if to_cellvi else (c_bn, s_bn)
    dst.load_state_dict(src.state_dict())


def _copy_fc(s_fc, c_fc, to_cellvi: bool) -> None:
    import torch

    s_blocks, c_blocks = list(s_fc.fc_layers), list(c_fc.layers)
    assert len(s_blocks) == len(c_blocks)
    for s_block, c_block in zip(s_blocks, c_blocks):
        _copy_linear(s_block[0], c_block["linear"], to_cellvi)
        s_bn = s_block[1]
        c_bn = [m for m in c_block["post"] if isinstance(m, torch.nn.BatchNorm1d)]
        assert (s_bn is None) == (not c_bn)
        if s_bn is not None:
            _copy_norm(s_bn, c_bn[0], to_cellvi)


def _copy_gaussian(s_fc, s_mean, s_var, c_enc, to_cellvi: bool) -> None:
    _copy_fc(s_fc, c_enc.encoder, to_cellvi)
    _copy_linear(s_mean, c_enc.mean_encoder, to_cellvi)
    _copy_linear(s_var, c_enc.var_encoder, to_cellvi)


def copy_vae(s_mod, c_mod, to_cellvi: bool) -> None:
    """The VAE part (what ``from_scvi_model`` carries over)."""
    import torch

    src, dst = (s_mod.px_r, c_mod.px_r) if to_cellvi else (c_mod.px_r, s_mod.px_r)
    with torch.no_grad():
        dst.copy_(src)
    e = s_mod.z_encoder
    _copy_gaussian(e.encoder, e.mean_encoder, e.var_encoder, c_mod.z_encoder, to_cellvi)
    d = s_mod.decoder
    _copy_fc(d.px_decoder, c_mod.decoder.hidden, to_cellvi)
    _copy_linear(d.px_scale_decoder[0], c_mod.decoder.scale_head, to_cellvi)
    _copy_linear(d.px_dropout_decoder, c_mod.decoder.zi_head, to_cellvi)


def copy_scanvi_layers(s_mod, c_mod, to_cellvi: bool) -> None:
    """scANVI's own layers: classifier, q(z2 | z1, y), p(z1 | z2, y)."""
    cls = s_mod.classifier.classifier
    _copy_fc(cls[0], c_mod.classifier.hidden, to_cellvi)
    _copy_linear(cls[1], c_mod.classifier.output, to_cellvi)
    e = s_mod.encoder_z2_z1
    _copy_gaussian(e.encoder, e.mean_encoder, e.var_encoder, c_mod.z2_encoder, to_cellvi)
    d = s_mod.decoder_z1_z2
    _copy_gaussian(d.decoder, d.mean_decoder, d.var_decoder, c_mod.z1_decoder, to_cellvi)


def worker(args) -> dict:
    import numpy as np
    import torch

    import cellvi

    torch.set_num_threads(args.threads)
    e1, e2 = (int(v) for v in args.epochs.split(","))
    reference, query = build(args, args.seed)
    scvi = scvi_for_worker(args.seed, args.threads)
    cellvi.settings.seed = args.seed
    cellvi.settings.progress_bar = False
    scvi_tool, scanvi_tool = args.worker
    ref_c, ref_s = reference.copy(), reference.copy()
    cellvi.SCVI.setup_anndata(ref_c, batch_key="batch", labels_key="labels")
    scvi.model.SCVI.setup_anndata(ref_s, batch_key="batch", labels_key="labels")

    def train_scvi(tool):
        if tool == "c":
            m = cellvi.SCVI(ref_c)
            m.train(max_epochs=e1, progress_bar=False)
        else:
            m = scvi.model.SCVI(ref_s)
            m.train(max_epochs=e1, accelerator="cpu", enable_progress_bar=False)
        return m

    trained = train_scvi(scvi_tool)
    if scanvi_tool == scvi_tool:
        scvi_model = trained
    elif scanvi_tool == "c":
        scvi_model = cellvi.SCVI(ref_c)
        copy_vae(trained.module, scvi_model.module, to_cellvi=True)
        scvi_model.is_trained = True
    else:
        scvi_model = scvi.model.SCVI(ref_s)
        copy_vae(scvi_model.module, trained.module, to_cellvi=False)
        scvi_model.is_trained_ = True
    scvi_model.module.eval()
    ref = ref_c if scanvi_tool == "c" else ref_s
    latent = np.asarray(scvi_model.get_latent_representation(ref))
    if scanvi_tool == "c":
        scanvi = cellvi.SCANVI.from_scvi_model(scvi_model, UNKNOWN)
        if args.same_init:
            torch.manual_seed(args.seed)
            draw = scvi.model.SCANVI.from_scvi_model(_scvi_shell(scvi, ref_s), UNKNOWN)
            copy_scanvi_layers(draw.module, scanvi.module, to_cellvi=True)
        scanvi.train(max_epochs=e2, progress_bar=False)
    else:
        scanvi = scvi.model.SCANVI.from_scvi_model(scvi_model, UNKNOWN)
        scanvi.train(max_epochs=e2, accelerator="cpu", enable_progress_bar=False)
    truth = reference.obs["cell_type"].to_numpy().astype(str)
    hidden = (reference.obs["labels"] == UNKNOWN).to_numpy()
    pred_ref = np.asarray(scanvi.predict(ref), dtype=str)
    if scanvi_tool == "c":
        q = cellvi.SCANVI.prepare_query_anndata(query.copy(), scanvi)
        qmodel = cellvi.SCANVI.load_query_data(q, scanvi)
    else:
        q = query.copy()
        scvi.model.SCANVI.prepare_query_anndata(q, scanvi)
        qmodel = scvi.model.SCANVI.load_query_data(q, scanvi, accelerator="cpu")
    pred_q = np.asarray(qmodel.predict(q), dtype=str)
    q_truth = query.obs["cell_type"].to_numpy().astype(str)
    other = query.obs["batch"].astype(str).str.endswith("othertech").to_numpy()
    return {
        "acc_hidden": float(np.mean(pred_ref[hidden] == truth[hidden])),
        "acc_query": float(np.mean(pred_q == q_truth)),
        "acc_query_same": float(np.mean(pred_q[~other] == q_truth[~other])),
        "acc_query_other": float(np.mean(pred_q[other] == q_truth[other])),
        "knn_scvi_hidden": knn_accuracy(latent, truth, ~hidden),
    }


def _scvi_shell(scvi, ref_s):
    """An untrained scvi-tools SCVI marked trained: only to let SCANVI.from_scvi_model draw its
    scANVI-only layers the way scvi-tools draws them."""
    m = scvi.model.SCVI(ref_s)
    m.is_trained_ = True
    return m


KEYS = ("acc_hidden", "acc_query", "acc_query_same", "acc_query_other", "knn_scvi_hidden")


def main():
    args = parse_args()
    if args.worker:
        emit_result(worker(args))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    extra = ["--epochs", args.epochs, *case_arguments(args), *(["--same-init"] if args.same_init else [])]

    def name(v):
        return f"SCVI {TOOLS[v[0]]}, scANVI {TOOLS[v[1]]}"

    def report(seed, v, r):
        print(f"seed {seed} {name(v):40s} " + "  ".join(f"{k} {r[k]:.3f}" for k in KEYS), flush=True)

    t0 = time.perf_counter()
    runs = run_per_seed(__file__, variants, seeds, args.threads, extra, report)
    body = ["| variant | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for v in variants:
        rows = [r for (s, vv), r in runs.items() if vv == v]
        if rows:
            body.append(f"| {name(v)} | " + " | ".join(
                f"{statistics.mean(r[k] for r in rows):.4f}" for k in KEYS) + " |")
    pairs = [("cc", "cs", "scANVI stage on cellvi's SCVI"), ("sc", "ss", "scANVI stage on scvi-tools' SCVI"),
             ("cc", "sc", "SCVI stage, cellvi's scANVI"), ("cs", "ss", "SCVI stage, scvi-tools' scANVI")]
    body += ["", "Paired by seed, first minus second, in points (mean, SE, seeds where the first is lower):", ""]
    for a, b, what in pairs:
        common = [s for s in seeds if (s, a) in runs and (s, b) in runs]
        if len(common) < 2:
            continue
        cells = []
        for k in ("acc_hidden", "acc_query", "acc_query_same", "acc_query_other"):
            d = [100 * (runs[(s, a)][k] - runs[(s, b)][k]) for s in common]
            se = statistics.stdev(d) / len(d) ** 0.5
            cells.append(f"{k} {statistics.mean(d):+.2f} (SE {se:.2f}; {sum(x < 0 for x in d)}/{len(d)})")
        body.append(f"- {what} ({a} - {b}): " + "; ".join(cells))
    print("\n".join(body))
    if args.record:
        notes = [f"{args.data.name}; the case of bench_scanvi_crosstech.py (ref {args.ref_cells} cells per plate, "
                 f"{args.label_fraction:.0%} labelled; query types {args.query_types}; tech sd {args.tech_sd}, "
                 f"capture {args.capture}); epochs SCVI/SCANVI {args.epochs}; no query training; "
                 f"same-init {args.same_init}; seeds {args.seeds}", *args.note]
        record_section(args.title, time.perf_counter() - t0, args.threads, notes, body)


if __name__ == "__main__":
    main()
