"""Process handlers (``isolation="process"``): a pool of killable worker processes shared by every domain.

:mod:`.pool` is the runtime's side (trio, trio-parallel): the pool, its fairness, timeouts, deaths and the log
lines the workers send back. :mod:`.context` and :mod:`.job` are what a worker imports: the picklable context
a handler gets, and the code around each call (no trio there: a worker starts light).
"""
