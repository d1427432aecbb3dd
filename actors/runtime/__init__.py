"""The actors: a registry following the mtwatch tree, one supervised actor per guest domain."""

from .. import _log  # noqa: F401  (actors loggers off until the application enables them)
from .context import DomainContext as DomainContext
from .context import DomainSnapshot as DomainSnapshot
from .context import State as State
from .domain import HandlerError as HandlerError
from .domain import HandlerTimeout as HandlerTimeout
from .lifecycle import MTWATCH_ROOT as MTWATCH_ROOT
from .lifecycle import DomainsSource as DomainsSource
from .lifecycle import MtwatchSource as MtwatchSource
from .mailbox import Mailbox as Mailbox
from .options import RuntimeOptions as RuntimeOptions
from .runtime import Runtime as Runtime
from .runtime import open_runtime as open_runtime
from .supervisor import ReconnectPolicy as ReconnectPolicy
from .supervisor import RestartPolicy as RestartPolicy
from .watches import Watch as Watch
