"""``python -m fastdiff.table``: the same as ``fastdiff table``."""

from fastdiff.table.command import main

raise SystemExit(main())
