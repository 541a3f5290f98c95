"""Deep Compression (Han et al. 2016): prune -> trained k-means weight sharing -> Huffman coding (F22).
The verb is :func:`lowbit.compress`; the file format is :mod:`lowbit.export.compressed`."""

from ...api import register_verb
from .config import DeepCompressionConfig as DeepCompressionConfig
from .pipeline import compress as compress
from .sharing import share_weights as share_weights
from .sharing import shared_layers as shared_layers
from .sharing import unshare as unshare

register_verb(DeepCompressionConfig, "lowbit.compress")
