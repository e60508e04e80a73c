"""Observing flows: the flow graph drawn from the code, its checks, and its
AsyncAPI document; the trace of each flow recorded in the store, and
expectations checked against it."""

from ..stores._trace import TraceEntry as TraceEntry
from ..stores._trace import TraceStore as TraceStore
from ..stores._trace import trace_of as trace_of
from ._asyncapi import ASYNCAPI_VERSION as ASYNCAPI_VERSION
from ._asyncapi import asyncapi_document as asyncapi_document
from ._graph import FlowGraph as FlowGraph
from ._graph import HandlerNode as HandlerNode
from ._graph import OrchestratorNode as OrchestratorNode
from ._graph import StepNode as StepNode
from ._graph import flow_graph as flow_graph
from ._graph_svg import graph_svg as graph_svg
from ._lint import LintFinding as LintFinding
from ._lint import lint as lint
from ._logs import JsonLogFormatter as JsonLogFormatter
from ._logs import LogFormat as LogFormat
from ._logs import TextLogFormatter as TextLogFormatter
from ._logs import setup_logging as setup_logging
from ._trace import TraceOptions as TraceOptions
from ._trace import TraceRecorder as TraceRecorder
from ._trace_expect import Expectation as Expectation
from ._trace_expect import StalledFlow as StalledFlow
from ._trace_expect import find_stalled as find_stalled
from ._trace_view import FlowTrace as FlowTrace
from ._trace_view import load_flows as load_flows
from ._trace_view import trace_json as trace_json
from ._trace_view import trace_mermaid as trace_mermaid
from ._trace_view import trace_text as trace_text

__all__ = [
    "ASYNCAPI_VERSION",
    "Expectation",
    "FlowGraph",
    "FlowTrace",
    "HandlerNode",
    "JsonLogFormatter",
    "LintFinding",
    "LogFormat",
    "OrchestratorNode",
    "StalledFlow",
    "StepNode",
    "TextLogFormatter",
    "TraceEntry",
    "TraceOptions",
    "TraceRecorder",
    "TraceStore",
    "asyncapi_document",
    "find_stalled",
    "flow_graph",
    "graph_svg",
    "lint",
    "load_flows",
    "setup_logging",
    "trace_json",
    "trace_mermaid",
    "trace_of",
    "trace_text",
]
