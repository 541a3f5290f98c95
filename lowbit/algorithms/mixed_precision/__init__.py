"""Mixed precision: per-layer sensitivity (output error, loss change, Hessian trace) and an exact
budgeted search over per-layer (weight, activation) widths under size, BitOPs or measured-latency budgets;
a differentiable (DNAS-style) search as the second method; accuracy-aware tuning."""

from .dnas import DnasResult as DnasResult
from .dnas import dnas_search as dnas_search
from .joint import JointPlan as JointPlan
from .joint import JointReport as JointReport
from .joint import joint_search as joint_search
from .joint import joint_sensitivity as joint_sensitivity
from .latency import LatencyTable as LatencyTable
from .latency import LatencyTableMismatch as LatencyTableMismatch
from .latency import cached_latency_table as cached_latency_table
from .latency import kernel_of as kernel_of
from .latency import measure_latency_table as measure_latency_table
from .search import FLOAT as FLOAT
from .search import METRICS as METRICS
from .search import Plan as Plan
from .search import default_pairs as default_pairs
from .search import model_cost as model_cost
from .search import pareto_frontier as pareto_frontier
from .search import search as search
from .search import size_for_average_bits as size_for_average_bits
from .sensitivity import ESTIMATORS as ESTIMATORS
from .sensitivity import LayerProbe as LayerProbe
from .sensitivity import SensitivityReport as SensitivityReport
from .sensitivity import layer_sensitivity as layer_sensitivity
from .tuning import TuneResult as TuneResult
from .tuning import accuracy_aware_tune as accuracy_aware_tune
from .tuning import held_out_split as held_out_split

search_bit_widths = search  # the public name in lowbit/__init__
