"""The ``flowkit`` command, one module per command group.

:mod:`flowkit.cli` builds the command line and runs it; :mod:`.common` holds
what the groups share: loading the target object, refusals, stores opened for
reading, messages on one line.
"""

__all__: list[str] = []
