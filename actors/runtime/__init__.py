"""The actors: a registry following the mtwatch tree, one supervised actor per guest domain."""

from .. import _log  # noqa: F401  (actors loggers off until the application enables them)
from .calls import HandlerError as HandlerError
from .calls import HandlerTimeout as HandlerTimeout
from .context import DomainContext as DomainContext
from .context import DomainSnapshot as DomainSnapshot
from .context import State as State
from .lifecycle import MTWATCH_ROOT as MTWATCH_ROOT
from .lifecycle import AutoSource as AutoSource
from .lifecycle import DomainsSource as DomainsSource
from .lifecycle import MtwatchSource as MtwatchSource
from .mailbox import Mailbox as Mailbox
from .messages import AskTimeout as AskTimeout
from .messages import DomainNotRunning as DomainNotRunning
from .messages import MailboxFull as MailboxFull
from .messages import MessageError as MessageError
from .options import RuntimeOptions as RuntimeOptions
from .runtime import Runtime as Runtime
from .runtime import open_runtime as open_runtime
from .supervisor import ReconnectPolicy as ReconnectPolicy
from .supervisor import RestartPolicy as RestartPolicy
from .watches import Watch as Watch
