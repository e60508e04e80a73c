"""``python -m flowkit``: the ``flowkit`` command."""

from .cli import main_exit

main_exit()
