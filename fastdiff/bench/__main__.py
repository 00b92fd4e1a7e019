"""``python -m fastdiff.bench``: the same as ``fastdiff bench``."""

from fastdiff.bench.command import main

raise SystemExit(main())
