"""Shared layers: fully connected stacks with covariates injected into every hidden layer,
the Gaussian encoder and the expression decoders of the scVI family."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._sparse import SparseInputLinear, covariate_init_bound


class CovariateLinear(nn.Module):
    """``Linear(concat(x, one_hot(c_1), ..., one_hot(c_k)))`` without building the one-hots.

    The one-hot part of the product is a column lookup, so each categorical covariate is an
    embedding of the output size added to ``Linear(x)``; it is the same function at lower cost.
    """

    def __init__(self, n_in: int, n_out: int, n_cats: Sequence[int] = (), bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=bias)
        bound = covariate_init_bound(n_in, n_cats)
        if any(int(n) > 1 for n in n_cats):  # nn.Linear drew within the range of x alone
            with torch.no_grad():
                self.linear.weight.uniform_(-bound, bound)
                if bias:
                    self.linear.bias.uniform_(-bound, bound)
        self.cat_weights = nn.ParameterList(
            nn.Parameter(torch.empty(int(n), n_out).uniform_(-bound, bound)) for n in n_cats
        )
        if not bias:
            # A single category's table would be the bias this layer must not have (with
            # several, each category's row is its offset, as a one-hot input gives): zero
            # and fixed, kept so that reference mapping can append rows for new categories.
            for n, weight in zip(n_cats, self.cat_weights):
                if int(n) == 1:
                    weight.data.zero_()
                    weight.requires_grad_(False)

    def forward(self, x: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        out = self.linear(x)
        for weight, codes in zip(self.cat_weights, cats):
            # index_select: its backward (index_add) is much faster on the CPU than that of
            # weight[codes] (index_put with accumulation), which was a sizeable share of a
            # totalVI training step.
            out = out + torch.index_select(weight, 0, codes)
        return out


class Dropout(nn.Dropout):
    """``nn.Dropout`` with its mask drawn as uniform numbers >= p: the same distribution,
    drawn faster on the CPU than by torch's bernoulli_, whose masks (one per dropout layer and
    step) were a visible share of a totalVI training step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


class FCLayers(nn.Module):
    """Stack of Linear -> BatchNorm/LayerNorm -> activation (``activation_fn``, default ReLU)
    -> Dropout.

    Categorical covariates (codes) are injected into every layer when ``inject_covariates``,
    else into the first only. With ``sparse_input`` the first layer also reads a
    ``SparseRows`` minibatch (see ``SparseInputLinear``). A covariate with a single category still gets its (redundant)
    table: reference mapping then only ever appends rows for new categories.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        use_activation: bool = True,
        bias: bool = True,
        inject_covariates: bool = True,
        activation_fn: type[nn.Module] = nn.ReLU,
        sparse_input: bool = False,
    ):
        super().__init__()
        sizes = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        self.inject = inject_covariates
        self.n_cats = [int(n) for n in n_cats]
        self.layers = nn.ModuleList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            inject = inject_covariates or i == 0
            linear = SparseInputLinear if sparse_input and i == 0 else CovariateLinear
            block = nn.ModuleDict({"linear": linear(a, b, self.n_cats if inject else (), bias)})
            post = []
            if use_batch_norm:
                post.append(nn.BatchNorm1d(b, momentum=0.01, eps=1e-3))
            if use_layer_norm:
                post.append(nn.LayerNorm(b, elementwise_affine=False))
            if use_activation:
                post.append(activation_fn())
            if dropout_rate > 0:
                post.append(Dropout(p=dropout_rate))
            block["post"] = nn.Sequential(*post)
            self.layers.append(block)

    def forward(self, x: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        for i, block in enumerate(self.layers):
            x = block["post"](block["linear"](x, cats if i == 0 or self.inject else ()))
        return x


class GaussianEncoder(nn.Module):
    """q(z | x) = N(mean(x), var(x)); ``latent_distribution="ln"`` applies softmax to z."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        latent_distribution: str = "normal",
        var_eps: float = 1e-4,
        var_activation=torch.exp,
        **fc_kwargs,
    ):
        super().__init__()
        self.latent_distribution = latent_distribution
        self.var_eps = var_eps
        self.var_activation = var_activation
        self.encoder = FCLayers(n_in, n_hidden, n_cats, n_layers, n_hidden, dropout_rate, **fc_kwargs)
        self.mean_encoder = nn.Linear(n_hidden, n_out)
        self.var_encoder = nn.Linear(n_hidden, n_out)

    def z_transform(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z, dim=-1) if self.latent_distribution == "ln" else z

    def forward(self, x: torch.Tensor, cats: Sequence[torch.Tensor] = ()):
        h = self.encoder(x, cats)
        mean = self.mean_encoder(h)
        var = self.var_activation(self.var_encoder(h)) + self.var_eps
        return mean, var


class Classifier(nn.Module):
    """Cell-type logits from a latent vector: an FC stack (none when ``n_layers=0``, i.e. a
    linear classifier) and a linear output layer."""

    def __init__(self, n_in: int, n_labels: int, n_hidden: int = 128, n_layers: int = 1,
                 dropout_rate: float = 0.1, use_batch_norm: bool = True, use_layer_norm: bool = False):
        super().__init__()
        self.hidden = (FCLayers(n_in, n_hidden, (), n_layers, n_hidden, dropout_rate, use_batch_norm,
                                use_layer_norm) if n_layers > 0 else None)
        self.output = nn.Linear(n_hidden if n_layers > 0 else n_in, n_labels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(z) if self.hidden is not None else z)


class ExpressionDecoder(nn.Module):
    """Latent -> (normalised expression ``scale``, ``theta`` per cell or None, ``zi_logits``
    or None). The dispersion and zero-inflation heads exist only where the likelihood uses them.

    ``scale`` sums to one over genes. With ``linear=True`` the map from z to the scale logits
    is linear (LDVAE) and its weights are the gene loadings.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 1,
        n_hidden: int = 128,
        inject_covariates: bool = True,
        use_batch_norm: bool = False,
        use_layer_norm: bool = False,
        linear: bool = False,
        bias: bool = True,
        dispersion_per_cell: bool = False,
        zero_inflation: bool = True,
    ):
        super().__init__()
        self.linear = linear
        if linear:
            def head():
                return FCLayers(n_in, n_out, n_cats, 1, n_hidden, 0.0, use_batch_norm, use_layer_norm,
                                use_activation=False, bias=bias, inject_covariates=inject_covariates)
            self.scale_head = head()
            self.zi_head = head() if zero_inflation else None
            self.theta_head = head() if dispersion_per_cell else None
        else:
            self.hidden = FCLayers(n_in, n_hidden, n_cats, n_layers, n_hidden, 0.0, use_batch_norm,
                                   use_layer_norm, inject_covariates=inject_covariates)
            self.scale_head = nn.Linear(n_hidden, n_out)
            self.zi_head = nn.Linear(n_hidden, n_out) if zero_inflation else None
            self.theta_head = nn.Linear(n_hidden, n_out) if dispersion_per_cell else None

    def forward(self, z: torch.Tensor, cats: Sequence[torch.Tensor] = (), with_zi: bool = True,
                with_theta: bool = True):
        """(scale, log_theta or None, zi_logits or None), each cells x genes."""
        if self.linear:
            def run(head):
                return head(z, cats)
        else:
            h = self.hidden(z, cats)

            def run(head):
                return head(h)
        scale = torch.softmax(run(self.scale_head), dim=-1)
        zi_logits = run(self.zi_head) if with_zi and self.zi_head is not None else None
        log_theta = run(self.theta_head) if with_theta and self.theta_head is not None else None
        return scale, log_theta, zi_logits

    def scale_by_gene(self, z: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``scale`` laid out genes x cells, for callers that reduce each gene over cells.

        The non-linear decoder computes the product transposed (W h^T, which MKL also runs
        faster) and normalises down the columns, which costs less than transposing a cells x
        genes result (a strided copy of the whole result).
        """
        if self.linear:  # the head's own layers (BatchNorm, covariates) have no such shortcut
            return self(z, cats, with_zi=False, with_theta=False)[0].t()
        hidden = self.hidden(z, cats)
        logits = torch.addmm(self.scale_head.bias[:, None], self.scale_head.weight, hidden.t())
        expd = logits.sub_(logits.amax(0)).exp_()  # a softmax down the columns, in place
        return expd.div_(expd.sum(0))

    def loadings(self) -> torch.Tensor:
        """Gene loadings (genes x latent) of a linear decoder, with BatchNorm folded in."""
        if not self.linear:
            raise TypeError("loadings exist only for a linear decoder")
        block = self.scale_head.layers[0]
        weight = block["linear"].linear.weight.detach()
        for layer in block["post"]:
            if isinstance(layer, nn.BatchNorm1d):
                gain = layer.weight.detach() / torch.sqrt(layer.running_var + layer.eps)
                weight = weight * gain[:, None]
        return weight


class TotalVIDecoder(nn.Module):
    """totalVI's decoder: latent (+ continuous covariates) -> RNA and protein parameters.

    Four FC stacks read the decoder input ``z`` (categorical covariates injected): genes,
    protein background, protein foreground and mixing. Each head reads ``[h, z]`` through one
    covariate-injected linear layer (no normalisation, no dropout):
        genes       scale = softmax(.), or softplus(.) when the library is a given size factor
                    (and zero-inflation logits for ZINB, from the mixing stack)
        background  back_alpha = .,  back_beta = softplus(.) + 1e-8
                    (mean and sd of the log background rate; ``activation_function_bg="exp"``
                    gives exp(.) + 1e-8, the form of totalVI before scvi-tools 1.2)
        foreground  fore_scale = relu(.) + 1 + 1e-8       (foreground / background ratio)
        mixing      protein mixing logits (of the background component)
    """

    SCALE_ACTIVATIONS = ("softmax", "softplus")
    BACKGROUND_ACTIVATIONS = ("softplus", "exp")

    def __init__(
        self,
        n_in: int,
        n_genes: int,
        n_proteins: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 1,
        n_hidden: int = 256,
        dropout_rate: float = 0.2,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        zero_inflation: bool = False,
        scale_activation: str = "softmax",
        activation_function_bg: str = "softplus",
    ):
        super().__init__()
        for name, value, choices in (("scale_activation", scale_activation, self.SCALE_ACTIVATIONS),
                                     ("activation_function_bg", activation_function_bg,
                                      self.BACKGROUND_ACTIVATIONS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        self.scale_activation = scale_activation
        self.activation_function_bg = activation_function_bg

        def stack():
            return FCLayers(n_in, n_hidden, n_cats, n_layers, n_hidden, dropout_rate, use_batch_norm,
                            use_layer_norm)

        def head(n_out, activation=False):
            return FCLayers(n_hidden + n_in, n_out, n_cats, 1, n_hidden, 0.0, False, False,
                            use_activation=activation)

        self.gene_hidden, self.gene_scale = stack(), head(n_genes)
        self.back_hidden, self.back_alpha, self.back_log_beta = stack(), head(n_proteins), head(n_proteins)
        self.fore_hidden, self.fore_scale = stack(), head(n_proteins, activation=True)
        self.mixing_hidden, self.protein_mixing = stack(), head(n_proteins)
        self.gene_dropout = head(n_genes) if zero_inflation else None

    def gene_logits(self, z: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Unnormalised log expression (its activation gives ``scale``)."""
        return self.gene_scale(torch.cat([self.gene_hidden(z, cats), z], dim=-1), cats)

    def gene_expression(self, z: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``scale``: softmax over genes, or softplus per gene with size factors."""
        logits = self.gene_logits(z, cats)
        if self.scale_activation == "softplus":
            return nn.functional.softplus(logits)
        return torch.softmax(logits, dim=-1)

    def forward(self, z: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> dict:
        out = {"scale": self.gene_expression(z, cats)}
        h_back = torch.cat([self.back_hidden(z, cats), z], dim=-1)
        out["back_alpha"] = self.back_alpha(h_back, cats)
        raw_sd = self.back_log_beta(h_back, cats)
        sd = torch.exp(raw_sd) if self.activation_function_bg == "exp" else nn.functional.softplus(raw_sd)
        out["back_beta"] = sd + 1e-8
        out["fore_scale"] = self.fore_scale(torch.cat([self.fore_hidden(z, cats), z], dim=-1), cats) + 1 + 1e-8
        h_mix = torch.cat([self.mixing_hidden(z, cats), z], dim=-1)
        out["mixing"] = self.protein_mixing(h_mix, cats)
        out["dropout"] = self.gene_dropout(h_mix, cats) if self.gene_dropout is not None else None
        return out


class SigmoidDecoder(nn.Module):
    """Input -> FC stack (no dropout) -> one linear layer -> sigmoid: a probability per output.

    PeakVI's decoders: accessibility per region, and (with one output) the per-cell library
    factor read from the data. Defaults as PeakVI's: LayerNorm, LeakyReLU, covariates injected
    into the first layer only.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cats: Sequence[int] = (),
        n_layers: int = 2,
        n_hidden: int = 128,
        use_batch_norm: bool = False,
        use_layer_norm: bool = True,
        inject_covariates: bool = False,
        activation_fn: type[nn.Module] = nn.LeakyReLU,
        sparse_input: bool = False,
    ):
        super().__init__()
        self.hidden = FCLayers(n_in, n_hidden, n_cats, n_layers, n_hidden, 0.0, use_batch_norm, use_layer_norm,
                               inject_covariates=inject_covariates, activation_fn=activation_fn,
                               sparse_input=sparse_input)
        self.output = nn.Linear(n_hidden, n_out)

    def forward(self, x: torch.Tensor, cats: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return torch.sigmoid(self.output(self.hidden(x, cats)))

    def by_output(self, x: torch.Tensor, cats: Sequence[torch.Tensor] = (),
                  outputs: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` laid out outputs x cells (the transposed product costs no more), for
        callers that reduce each output over cells; ``outputs``: only these rows."""
        hidden = self.hidden(x, cats)
        weight, bias = self.output.weight, self.output.bias
        if outputs is not None:
            weight, bias = weight[outputs], bias[outputs]
        return torch.addmm(bias[:, None], weight, hidden.t()).sigmoid_()
