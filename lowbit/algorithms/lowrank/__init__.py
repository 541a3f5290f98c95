"""Low-rank decomposition (spec F21): truncated SVD of Linear / 1x1 conv layers, Tucker-2 (Kim et al. 2016)
and CP (Lebedev et al. 2015) of k x k convs, ranks by energy or by a MAC budget.

``decompose(model, LowRankConfig(...), example=x)`` swaps layers for ``nn.Sequential`` factorizations in
place and records what it did in ``model.lowbit_info``; fine-tune afterwards with :func:`lowbit.train`.
The single-layer math lives in :mod:`lowbit.algorithms.lowrank.factorize`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> fc = nn.Linear(32, 16)
    >>> seq = svd_linear(fc, 16)       # full rank: the same function
    >>> x = torch.randn(4, 32)
    >>> torch.allclose(seq(x), fc(x), atol=1e-5)
    True
"""

from ...api import register_verb  # noqa: E402
from .config import LowRankConfig as LowRankConfig
from .factorize import LowRankSequential as LowRankSequential
from .factorize import choose_rank_energy as choose_rank_energy
from .factorize import cp_conv as cp_conv
from .factorize import cp_factors as cp_factors
from .factorize import cp_max_rank as cp_max_rank
from .factorize import macs_of as macs_of
from .factorize import mode_singular_values as mode_singular_values
from .factorize import reconstruct_weight as reconstruct_weight
from .factorize import svd_conv as svd_conv
from .factorize import svd_linear as svd_linear
from .factorize import svd_max_rank as svd_max_rank
from .factorize import tucker2_conv as tucker2_conv
from .factorize import tucker2_factors as tucker2_factors
from .handler import decompose as decompose

# decompose builds factor chains and needs an example input: recipes of kind lowrank load as LowRankConfig,
# and quantize_ points to this verb
register_verb(LowRankConfig, "lowbit.decompose")
