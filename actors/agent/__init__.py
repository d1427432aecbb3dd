"""``mtwatch agent``: the long-running dom0 daemon (config, watch rules, control socket, metrics, systemd notify,
logs), and what talks to it: ``mtwatch status``/``domains``/``top``/``reset``. The commands are parsed in
:mod:`actors.cli`; the daemon is :func:`actors.agent.daemon.run_agent`. (``mtwatch demo`` is
:mod:`actors.demo`, which runs the agent; the agent never imports it.)"""

from .. import _log  # noqa: F401  (actors loggers off until the application enables them)

DEFAULT_CONTROL = "/run/mtwatch/control"  # the control socket's path unless configured
DEFAULT_ROWS = 50  # rows of `mtwatch status` (trouble first) unless --rows or --all say otherwise
