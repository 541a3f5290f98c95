"""lowbit — quantization and compression of PyTorch models, measured on real data.

Example:
    >>> import lowbit
    >>> sorted(lowbit.list_recipes())[:3]
    ['w2a8', 'w4-weight-only', 'w4a4']
"""

from .algorithms.ptq import PTQConfig as PTQConfig
from .api import (
    activation_quantizers as activation_quantizers,
    calibrate as calibrate,
    evaluate as evaluate,
    quantize_ as quantize_,
    register_handler as register_handler,
)
from .config import Config as Config, Override as Override, QuantSpec as QuantSpec, Select as Select
from .errors import (
    CalibrationError as CalibrationError,
    ConfigError as ConfigError,
    LowbitError as LowbitError,
    SelectorError as SelectorError,
    UnsupportedError as UnsupportedError,
    WeightsError as WeightsError,
)
from .observe import calibrating as calibrating
from .quant import (
    Affine as Affine,
    IntFormat as IntFormat,
    PerChannel as PerChannel,
    PerGroup as PerGroup,
    PerTensor as PerTensor,
    Symmetric as Symmetric,
)
from .recipes import list_recipes as list_recipes, load_recipe as load_recipe

__version__ = "0.1.0"
