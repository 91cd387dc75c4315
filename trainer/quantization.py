"""bitsandbytes for kubetune: importing it quietly, the quantization configs, CPU quirks.

Two things in bitsandbytes 0.50 need handling on CPUs with AVX512-BF16 (such as
Sapphire Rapids and later Xeons, which CI machines often are):

1. On import it tries to fetch a fused CPU 4-bit GEMM from the Hugging Face hub
   (`kernels-community/quantization-bitsandbytes`, through the `kernels` package) and
   logs a warning when it cannot ("Failed to load CPU gemm_4bit_forward from
   kernels-community"). The kernel only serves the eval-time path described below; when
   it is missing bitsandbytes falls back to its own native CPU kernel, so nothing is
   lost for training. A pod has no hub to fetch from (and the fetch fails on CUDA builds
   of torch anyway: bitsandbytes issue #2064), so the warning is noise: we demote it to
   a debug message.

2. `Linear4bit.forward` in eval mode repacks the layer's weight *in place* into a CPU
   inference layout and from then on routes every matmul, training included, through
   `gemv_4bit`, an op without an autograd formula. Gradients that flow through the
   frozen base weights towards earlier layers are then silently wrong ("an autograd
   kernel was not registered ... silently incorrect behavior"). Training that
   evaluates every N steps hits exactly this. We switch the repacking off on every
   4-bit layer (`disable_cpu_inference_repacking`); the 4-bit weights then keep the
   layout that dequantize + matmul uses in training and evaluation alike, which also
   keeps eval numerics equal to training numerics. Generation on CPU is a little
   slower for it, which does not matter for a trainer.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_HUB_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DemoteHubKernelNotice(logging.Filter):
    """Turns bitsandbytes' hub-kernel warning into one debug line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_HUB_KERNEL_NOTICE):
            log.debug(
                "bitsandbytes: no fused CPU 4-bit kernel from the hub (%s); its native CPU kernel "
                "serves instead (training does not use either)",
                record.args[0] if isinstance(record.args, tuple) and record.args else "",
            )
            return False
        return True


def quiet_bitsandbytes_import() -> None:
    """Install the filter before anything imports bitsandbytes (peft and transformers do).

    The warning is logged while bitsandbytes' CPU backend module is imported, so the
    filter must sit on that module's logger beforehand.
    """
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DemoteHubKernelNotice) for f in logger.filters):
        logger.addFilter(_DemoteHubKernelNotice())


@cache
def native_library_loaded() -> bool:
    """Whether bitsandbytes loaded its native library for this machine (CPU or CUDA build).

    Without it, 4-bit and 8-bit layers cannot run; `plan` turns that into a config error.
    """
    quiet_bitsandbytes_import()
    try:
        from bitsandbytes.cextension import ErrorHandlerMockBNBNativeLibrary, lib
    except Exception as e:  # an import failure of a compiled extension can be anything
        log.debug("bitsandbytes cannot be imported: %s", e)
        return False
    return not isinstance(lib, ErrorHandlerMockBNBNativeLibrary)


def four_bit_config(compute_dtype: torch.dtype) -> Any:
    """QLoRA's quantization: NF4 weights, double-quantized scales, matmuls in compute_dtype."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        # Keep storage uint8 (the default): the CPU kernels accept nothing else.
        bnb_4bit_quant_storage=torch.uint8,
    )


def eight_bit_config() -> Any:
    """LLM.int8() base weights for `method.type: lora` with `baseWeights: int8`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def disable_cpu_inference_repacking(model: torch.nn.Module) -> int:
    """Keep every 4-bit layer in its training layout (see the module docs); returns how many."""
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
