"""Where the set of live guest domains comes from: the lifecycle sources.

- ``mtwatch`` (:mod:`.mtwatch`): the xenwatch-multithreading nodes under ``/local/domain/0/mtwatch``.
- ``domains`` (:mod:`.domains`, with :mod:`.release`): a stock Xen host's domains, as its daemon knows them.
- ``auto`` (:mod:`.auto`, the default): ``mtwatch`` whenever its root node exists, ``domains`` otherwise.

What a source is and what it reports to is :mod:`.protocol`; how sources ask the daemon is :mod:`.requests`;
which nodes they trust is :mod:`.trust`.
"""
