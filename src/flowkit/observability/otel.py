"""OpenTelemetry for flowkit's buses and orchestrators (the ``flowkit[otel]`` extra).

Importing this module without ``opentelemetry-api`` installed raises
:class:`~flowkit.MissingDependency`, naming the extra to install.
"""

from ._otel import OpenTelemetry as OpenTelemetry

__all__ = ["OpenTelemetry"]
