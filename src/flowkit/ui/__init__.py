"""A local web dashboard over a flowkit store: workflows, flows, dead letters and
the flow graph, with repair buttons (``flowkit ui``; the ``flowkit[ui]`` extra).

Build the ASGI application in-process with :func:`create_app`::

    app = create_app(SQLiteStore("flowkit.db"), token="s3cret")
"""

from ._app import create_app as create_app

__all__ = ["create_app"]
