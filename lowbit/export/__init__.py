"""Export: the packed ``.lowbit`` checkpoint format (bit-packed weights, manifest, SHA-256)."""

from .bitpack import pack_bits as pack_bits
from .bitpack import unpack_bits as unpack_bits
from .checkpoint import CheckpointError as CheckpointError
from .checkpoint import load as load
from .checkpoint import save as save
from .onnx import export_onnx as export_onnx
