"""Observing flows: the flow graph drawn from the code, its checks, and its
AsyncAPI document."""

from ._asyncapi import ASYNCAPI_VERSION as ASYNCAPI_VERSION
from ._asyncapi import asyncapi_document as asyncapi_document
from ._graph import FlowGraph as FlowGraph
from ._graph import HandlerNode as HandlerNode
from ._graph import OrchestratorNode as OrchestratorNode
from ._graph import StepNode as StepNode
from ._graph import flow_graph as flow_graph
from ._lint import LintFinding as LintFinding
from ._lint import lint as lint
from ._logs import JsonLogFormatter as JsonLogFormatter
from ._logs import LogFormat as LogFormat
from ._logs import TextLogFormatter as TextLogFormatter
from ._logs import setup_logging as setup_logging

__all__ = [
    "ASYNCAPI_VERSION",
    "FlowGraph",
    "HandlerNode",
    "JsonLogFormatter",
    "LintFinding",
    "LogFormat",
    "OrchestratorNode",
    "StepNode",
    "TextLogFormatter",
    "asyncapi_document",
    "flow_graph",
    "lint",
    "setup_logging",
]
