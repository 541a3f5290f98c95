"""lowbit — quantization and compression of PyTorch models, measured on real data.

Example:
    >>> import lowbit
    >>> [r for r in sorted(lowbit.list_recipes()) if r.startswith("w8a8")]
    ['w8a8', 'w8a8-dynamic', 'w8a8-per-tensor']
"""

from .algorithms.aciq import ACIQConfig as ACIQConfig
from .algorithms.dfq import DFQConfig as DFQConfig
from .algorithms.mixed_precision import JointPlan as JointPlan
from .algorithms.mixed_precision import Plan as Plan
from .algorithms.mixed_precision import SensitivityReport as SensitivityReport
from .algorithms.mixed_precision import joint_search as joint_search
from .algorithms.mixed_precision import joint_sensitivity as joint_sensitivity
from .algorithms.mixed_precision import layer_sensitivity as layer_sensitivity
from .algorithms.mixed_precision import search_bit_widths as search_bit_widths
from .algorithms.ptq import PTQConfig as PTQConfig
from .algorithms.zeroq import ZeroQConfig as ZeroQConfig
from .api import (
    activation_quantizers as activation_quantizers,
)
from .api import (
    calibrate as calibrate,
)
from .api import (
    evaluate as evaluate,
)
from .api import (
    quantize_ as quantize_,
)
from .api import (
    register_handler as register_handler,
)
from .config import Config as Config
from .config import Override as Override
from .config import QuantSpec as QuantSpec
from .config import Select as Select
from .errors import (
    CalibrationError as CalibrationError,
)
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    LowbitError as LowbitError,
)
from .errors import (
    SelectorError as SelectorError,
)
from .errors import (
    UnsupportedError as UnsupportedError,
)
from .errors import (
    WeightsError as WeightsError,
)
from .export import CheckpointError as CheckpointError
from .export import export_onnx as export_onnx
from .export import load as load
from .export import save as save
from .export.compressed import load_compressed as load_compressed
from .export.compressed import save_compressed as save_compressed
from .observe import calibrating as calibrating
from .quant import (
    Affine as Affine,
)
from .quant import (
    IntFormat as IntFormat,
)
from .quant import (
    PerChannel as PerChannel,
)
from .quant import (
    PerGroup as PerGroup,
)
from .quant import (
    PerTensor as PerTensor,
)
from .quant import (
    PerToken as PerToken,
)
from .quant import (
    Symmetric as Symmetric,
)
from .recipes import list_recipes as list_recipes
from .recipes import load_recipe as load_recipe
from .runtime import IntegerEngine as IntegerEngine
from .runtime import integer_exact as integer_exact

__version__ = "0.1.0"

# algorithms that register themselves with quantize_ on import (after .api exists)
from .algorithms.adaround import AdaRoundConfig as AdaRoundConfig  # noqa: E402
from .algorithms.deep_compression import DeepCompressionConfig as DeepCompressionConfig  # noqa: E402
from .algorithms.deep_compression import compress as compress  # noqa: E402
from .algorithms.distill import distillation_loss as distillation_loss  # noqa: E402
from .algorithms.dynamic import DynamicConfig as DynamicConfig  # noqa: E402
from .algorithms.dynamic import DynamicQuantModel as DynamicQuantModel  # noqa: E402
from .algorithms.dynamic import evaluate_dynamic as evaluate_dynamic  # noqa: E402
from .algorithms.dynamic import load_dynamic as load_dynamic  # noqa: E402
from .algorithms.dynamic import prepare_dynamic as prepare_dynamic  # noqa: E402
from .algorithms.dynamic import save_dynamic as save_dynamic  # noqa: E402
from .algorithms.dynamic import train_dynamic as train_dynamic  # noqa: E402
from .algorithms.iterative import IterativeConfig as IterativeConfig  # noqa: E402
from .algorithms.lowrank import LowRankConfig as LowRankConfig  # noqa: E402
from .algorithms.lowrank import decompose as decompose  # noqa: E402
from .algorithms.pruning import PruneConfig as PruneConfig  # noqa: E402
from .algorithms.pruning import StructuredPruneConfig as StructuredPruneConfig  # noqa: E402
from .algorithms.pruning import prune as prune  # noqa: E402
from .algorithms.pruning import pruning_sensitivity as pruning_sensitivity  # noqa: E402
from .algorithms.qat import QATConfig as QATConfig  # noqa: E402
from .algorithms.qat import train as train  # noqa: E402
from .algorithms.transformer import TransformerPTQConfig as TransformerPTQConfig  # noqa: E402
from .algorithms.transformer import quantize_transformer as quantize_transformer  # noqa: E402
