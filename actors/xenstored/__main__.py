"""``python -m actors.xenstored --socket PATH``."""

from .server import main

raise SystemExit(main())
