"""XenStore on trio: the sans-IO wire format (:mod:`actors.xs.wire`) and a trio-native client."""

from .client import Transaction as Transaction
from .client import XenStore as XenStore
from .client import connect as connect
from .client import open_xenstore as open_xenstore
from .subscription import Subscription as Subscription
from .subscription import WatchEvent as WatchEvent
