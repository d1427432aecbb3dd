"""The embedded XenStore daemon: the XenStore wire protocol served the way C xenstored 4.22 serves it (or,
with ``compat="4.17"``, 4.17).

``XenStored`` is the daemon; ``open_xenstored()`` runs one on a unix socket for the duration of a block;
``main()`` runs one in the foreground (``python -m actors.xenstored --socket PATH``).
"""

from .. import _log  # noqa: F401  (actors loggers off until the application enables them)
from .domains import Quotas as Quotas
from .server import XenStored as XenStored
from .server import main as main
from .server import open_xenstored as open_xenstored

__all__ = ["Quotas", "XenStored", "main", "open_xenstored"]
