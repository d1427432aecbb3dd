"""``mtwatch agent``: the long-running dom0 daemon (config, watch rules, metrics, systemd notify, logs), and
``mtwatch status``/``top``/``demo``. The entry point is :func:`actors.agent.daemon.main`."""

from .. import _log  # noqa: F401  (actors loggers off until the application enables them)
