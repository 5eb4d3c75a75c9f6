"""ortho_optax: composable Optax transformations for Muon-style optimizers.

Orthogonalization engines (Newton-Schulz with published coefficient tables,
Gram Newton-Schulz, AuON, exact SVD) and, built on them, Optax
``GradientTransformation``s and named optimizers.
"""

from ortho_optax.engines.auon import auon as auon_orthogonalize
from ortho_optax.engines.coefficients import PRESETS as COEFFICIENT_PRESETS
from ortho_optax.engines.coefficients import (
    CoefficientTable as CoefficientTable,
)
from ortho_optax.engines.flops import count_matmul_flops as count_matmul_flops
from ortho_optax.engines.gram import gram_newton_schulz as gram_newton_schulz
from ortho_optax.engines.matrix_roots import inverse_root as inverse_root
from ortho_optax.engines.matrix_roots import (
    inverse_root_flops as inverse_root_flops,
)
from ortho_optax.engines.newton_schulz import newton_schulz as newton_schulz
from ortho_optax.engines.orthogonalize import orthogonalize as orthogonalize
from ortho_optax.engines.orthogonalize import (
    orthogonalize_flops as orthogonalize_flops,
)
from ortho_optax.engines.orthogonalize import select_method as select_method
from ortho_optax.engines.polar import orthogonality_error as orthogonality_error
from ortho_optax.engines.polar import polar_svd as polar_svd
from ortho_optax.engines.prism import prism as prism_orthogonalize
from ortho_optax.optimizers.adamuon import adamuon as adamuon
from ortho_optax.optimizers.auon import auon as auon
from ortho_optax.optimizers.auon import hybrid_auon as hybrid_auon
from ortho_optax.optimizers.dion import dion as dion
from ortho_optax.optimizers.dion2 import dion2 as dion2
from ortho_optax.optimizers.learning_rates import (
    RECOMMENDED_LEARNING_RATES as RECOMMENDED_LEARNING_RATES,
)
from ortho_optax.optimizers.learning_rates import (
    recommended_learning_rate as recommended_learning_rate,
)
from ortho_optax.optimizers.muon import muon as muon
from ortho_optax.optimizers.muon import turbo_muon as turbo_muon
from ortho_optax.optimizers.normuon import normuon as normuon
from ortho_optax.optimizers.root import root as root
from ortho_optax.optimizers.scion import scion as scion
from ortho_optax.optimizers.scion import scion_init as scion_init
from ortho_optax.optimizers.scion import scion_norms as scion_norms
from ortho_optax.optimizers.shampoo import shampoo as shampoo
from ortho_optax.optimizers.soap import soap as soap
from ortho_optax.optimizers.trion import trion as trion
from ortho_optax.optimizers.trust_region import trust_region as trust_region
from ortho_optax.parallel.hlo import collective_bytes as collective_bytes
from ortho_optax.parallel.hlo import matmul_flops as compiled_matmul_flops
from ortho_optax.parallel.sharding import ShardingOptions as ShardingOptions
from ortho_optax.parallel.state_shardings import (
    state_shardings as state_shardings,
)
from ortho_optax.routing import DimensionNumbers as DimensionNumbers
from ortho_optax.routing import SplitDimensionNumbers as SplitDimensionNumbers
from ortho_optax.routing import dimension_numbers_tree as dimension_numbers_tree
from ortho_optax.routing import label_params as label_params
from ortho_optax.state.quantized import QuantFormat as QuantFormat
from ortho_optax.state.quantized import QuantizedArray as QuantizedArray
from ortho_optax.state.quantized import dequantize as dequantize
from ortho_optax.state.quantized import quantize as quantize
from ortho_optax.tools.gradient_projection import (
    collect_representations as collect_representations,
)
from ortho_optax.tools.gradient_projection import conv_patches as conv_patches
from ortho_optax.tools.gradient_projection import (
    relaxing_bases as relaxing_bases,
)
from ortho_optax.tools.gradient_projection import update_bases as update_bases
from ortho_optax.tools.pome import pome as pome
from ortho_optax.tools.qk_clip import qk_clip as qk_clip
from ortho_optax.transforms.dion import ScaleByDionState as ScaleByDionState
from ortho_optax.transforms.dion import scale_by_dion as scale_by_dion
from ortho_optax.transforms.dion2 import ScaleByDion2State as ScaleByDion2State
from ortho_optax.transforms.dion2 import scale_by_dion2 as scale_by_dion2
from ortho_optax.transforms.elementwise_norm import (
    ScaleByElementwiseNormState as ScaleByElementwiseNormState,
)
from ortho_optax.transforms.elementwise_norm import (
    scale_by_elementwise_norm as scale_by_elementwise_norm,
)
from ortho_optax.transforms.lmo import LMONorm as LMONorm
from ortho_optax.transforms.lmo import scale_by_lmo as scale_by_lmo
from ortho_optax.transforms.momentum import (
    ScaleByMomentumState as ScaleByMomentumState,
)
from ortho_optax.transforms.momentum import (
    scale_by_momentum as scale_by_momentum,
)
from ortho_optax.transforms.neuron_norm import (
    ScaleByNeuronNormState as ScaleByNeuronNormState,
)
from ortho_optax.transforms.neuron_norm import (
    scale_by_neuron_norm as scale_by_neuron_norm,
)
from ortho_optax.transforms.orthogonalization import (
    scale_by_orthogonalization as scale_by_orthogonalization,
)
from ortho_optax.transforms.projection import (
    project_gradients as project_gradients,
)
from ortho_optax.transforms.projection import (
    with_gradient_projection as with_gradient_projection,
)
from ortho_optax.transforms.quantile_clip import (
    clip_by_quantile as clip_by_quantile,
)
from ortho_optax.transforms.shampoo import (
    ScaleByShampooState as ScaleByShampooState,
)
from ortho_optax.transforms.shampoo import scale_by_shampoo as scale_by_shampoo
from ortho_optax.transforms.shape import scale_by_shape as scale_by_shape
from ortho_optax.transforms.soap import ScaleBySoapState as ScaleBySoapState
from ortho_optax.transforms.soap import scale_by_soap as scale_by_soap
from ortho_optax.transforms.trion import ScaleByTrionState as ScaleByTrionState
from ortho_optax.transforms.trion import scale_by_trion as scale_by_trion
from ortho_optax.transforms.weight_decay import (
    add_cautious_decayed_weights as add_cautious_decayed_weights,
)

__version__ = "0.1.0"

__all__ = (
    "COEFFICIENT_PRESETS",
    "CoefficientTable",
    "LMONorm",
    "QuantFormat",
    "QuantizedArray",
    "RECOMMENDED_LEARNING_RATES",
    "ScaleByDion2State",
    "ScaleByDionState",
    "ScaleByElementwiseNormState",
    "ScaleByMomentumState",
    "DimensionNumbers",
    "ScaleByNeuronNormState",
    "ScaleByShampooState",
    "ScaleBySoapState",
    "ScaleByTrionState",
    "ShardingOptions",
    "SplitDimensionNumbers",
    "adamuon",
    "add_cautious_decayed_weights",
    "auon",
    "auon_orthogonalize",
    "clip_by_quantile",
    "collect_representations",
    "collective_bytes",
    "compiled_matmul_flops",
    "conv_patches",
    "count_matmul_flops",
    "dequantize",
    "dimension_numbers_tree",
    "dion",
    "dion2",
    "gram_newton_schulz",
    "hybrid_auon",
    "inverse_root",
    "inverse_root_flops",
    "label_params",
    "muon",
    "newton_schulz",
    "normuon",
    "orthogonality_error",
    "orthogonalize",
    "orthogonalize_flops",
    "polar_svd",
    "pome",
    "prism_orthogonalize",
    "project_gradients",
    "qk_clip",
    "quantize",
    "recommended_learning_rate",
    "relaxing_bases",
    "root",
    "scale_by_dion",
    "scale_by_dion2",
    "scale_by_elementwise_norm",
    "scale_by_lmo",
    "scale_by_momentum",
    "scale_by_neuron_norm",
    "scale_by_orthogonalization",
    "scale_by_shampoo",
    "scale_by_shape",
    "scale_by_soap",
    "scale_by_trion",
    "scion",
    "scion_init",
    "scion_norms",
    "select_method",
    "shampoo",
    "soap",
    "state_shardings",
    "trion",
    "trust_region",
    "turbo_muon",
    "update_bases",
    "with_gradient_projection",
)
