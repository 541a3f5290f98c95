"""Scale-out on PyTorch's own ``torch.distributed`` (F24): the process group ``torchrun`` starts
(:mod:`~lowbit.distributed.runtime`), sharded calibration with all-reduced observer statistics
(:mod:`~lowbit.distributed.calibrate`) and quantized gradient communication for
``DistributedDataParallel`` (:mod:`~lowbit.distributed.comm`). Distributed QAT itself is
:func:`lowbit.train` with a process group up (``distributed=None`` detects it).

Example:
    >>> from lowbit import distributed
    >>> distributed.world_size(), distributed.is_main()
    (1, True)
"""

from .calibrate import calibrate_sharded as calibrate_sharded
from .calibrate import shard_batches as shard_batches
from .comm import METHODS as METHODS
from .comm import GradCompression as GradCompression
from .comm import compression_hook as compression_hook
from .comm import register as register
from .runtime import active as active
from .runtime import agree as agree
from .runtime import collective_guard as collective_guard
from .runtime import init_distributed as init_distributed
from .runtime import is_initialized as is_initialized
from .runtime import is_main as is_main
from .runtime import launched as launched
from .runtime import rank as rank
from .runtime import shutdown as shutdown
from .runtime import together as together
from .runtime import world_size as world_size
