import os

import torch

# Triton kernels run on the CPU under the interpreter when there is no GPU.
# The variable must be set before triton.jit decorates the kernels, i.e. before
# diffcls_fast.kernels.{fused_noise,fused_errors} are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests never write to the user's cache.
os.environ.setdefault(
    "DIFFCLS_CACHE_DIR", os.path.join(os.environ.get("PYTEST_TMPDIR", "/tmp"), "diffcls-fast-test-cache")
)
