"""``python -m fastdiff``: the same as the ``fastdiff`` console script."""

from fastdiff.cli import main

raise SystemExit(main())
