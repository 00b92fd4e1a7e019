"""``python -m fastdiff.demo``: the same as ``fastdiff demo`` (works under ``torchrun``)."""

from fastdiff.demo.command import main

raise SystemExit(main())
