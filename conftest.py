"""Session-wide test set-up, loaded before any test module imports Triton.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; the variable
must be set before the kernels are decorated, hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
