"""mtwatch: a dom0 watch runtime for Xen hosts, one supervised trio actor per guest domain."""

from loguru import logger as _logger

from .runtime import MTWATCH_ROOT as MTWATCH_ROOT
from .runtime import DomainContext as DomainContext
from .runtime import DomainSnapshot as DomainSnapshot
from .runtime import HandlerError as HandlerError
from .runtime import HandlerTimeout as HandlerTimeout
from .runtime import ReconnectPolicy as ReconnectPolicy
from .runtime import RestartPolicy as RestartPolicy
from .runtime import Runtime as Runtime
from .runtime import State as State
from .runtime import Watch as Watch
from .runtime import open_runtime as open_runtime
from .toolstack import announce_domain as announce_domain
from .toolstack import retire_domain as retire_domain
from .xs.client import Transaction as Transaction
from .xs.client import XenStore as XenStore
from .xs.client import connect as connect
from .xs.client import open_xenstore as open_xenstore
from .xs.errors import AlreadyExists as AlreadyExists
from .xs.errors import ConnectionLost as ConnectionLost
from .xs.errors import InvalidArgument as InvalidArgument
from .xs.errors import InvalidDomid as InvalidDomid
from .xs.errors import InvalidPath as InvalidPath
from .xs.errors import InvalidPermission as InvalidPermission
from .xs.errors import NotFound as NotFound
from .xs.errors import OperationFailed as OperationFailed
from .xs.errors import PayloadTooLarge as PayloadTooLarge
from .xs.errors import PermissionDenied as PermissionDenied
from .xs.errors import ProtocolError as ProtocolError
from .xs.errors import QuotaExceeded as QuotaExceeded
from .xs.errors import TransactionConflict as TransactionConflict
from .xs.errors import XenStoreError as XenStoreError
from .xs.errors import XenStoreUnavailable as XenStoreUnavailable
from .xs.subscription import Subscription as Subscription
from .xs.subscription import WatchEvent as WatchEvent

# Library code never configures logging: an application calls logger.enable("actors").
_logger.disable("actors")

__version__ = "0.1.0"
