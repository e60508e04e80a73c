"""flowkit: workflows across microservices, orchestrated or choreographed.

Broker transports and database stores live in :mod:`flowkit.transports` and
:mod:`flowkit.stores`; their client libraries are imported only when used.
"""

from ._errors import AlreadyHandled as AlreadyHandled
from ._errors import BusNotStarted as BusNotStarted
from ._errors import ConcurrencyConflict as ConcurrencyConflict
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import DecodeError as DecodeError
from ._errors import DefinitionError as DefinitionError
from ._errors import FlowkitError as FlowkitError
from ._errors import HandlerTimeout as HandlerTimeout
from ._errors import InvalidWorkflowState as InvalidWorkflowState
from ._errors import MessageTooLarge as MessageTooLarge
from ._errors import MissingDependency as MissingDependency
from ._errors import NonRetryableError as NonRetryableError
from ._errors import NotFound as NotFound
from ._errors import OrchestratorNotStarted as OrchestratorNotStarted
from ._errors import RemoteError as RemoteError
from ._errors import RequestTimeout as RequestTimeout
from ._errors import ResultNotAvailable as ResultNotAvailable
from ._errors import SignatureError as SignatureError
from ._errors import StepTimeout as StepTimeout
from ._errors import StoreError as StoreError
from ._errors import TransportClosed as TransportClosed
from ._errors import TransportError as TransportError
from ._errors import WaitTimeout as WaitTimeout
from ._errors import WorkflowCancelled as WorkflowCancelled
from ._errors import WorkflowNotFound as WorkflowNotFound
from ._events import Command as Command
from ._events import Envelope as Envelope
from ._events import Event as Event
from ._events import Message as Message
from ._retry import Retry as Retry
from ._signing import Signing as Signing
from .choreography import BusObserver as BusObserver
from .choreography import Choreography as Choreography
from .choreography import Context as Context
from .choreography import Outbox as Outbox
from .choreography import Outgoing as Outgoing
from .orchestration import Orchestrator as Orchestrator
from .orchestration import Outcome as Outcome
from .orchestration import Parallel as Parallel
from .orchestration import Remote as Remote
from .orchestration import SagaObserver as SagaObserver
from .orchestration import Sleep as Sleep
from .orchestration import Step as Step
from .orchestration import StepContext as StepContext
from .orchestration import StepEvent as StepEvent
from .orchestration import WaitForEvent as WaitForEvent
from .orchestration import WaitForSignal as WaitForSignal
from .orchestration import WorkflowEvent as WorkflowEvent
from .orchestration import WorkflowInfo as WorkflowInfo
from .orchestration import WorkflowStatus as WorkflowStatus
from .stores import Claim as Claim
from .stores import DeadLetter as DeadLetter

__version__ = "0.1.0"

__all__ = [
    "AlreadyHandled",
    "BusNotStarted",
    "BusObserver",
    "Choreography",
    "Claim",
    "Command",
    "ConcurrencyConflict",
    "Context",
    "DeadLetter",
    "DeadlineExceeded",
    "DecodeError",
    "DefinitionError",
    "Envelope",
    "Event",
    "FlowkitError",
    "HandlerTimeout",
    "InvalidWorkflowState",
    "Message",
    "MessageTooLarge",
    "MissingDependency",
    "NonRetryableError",
    "NotFound",
    "Orchestrator",
    "OrchestratorNotStarted",
    "Outbox",
    "Outcome",
    "Outgoing",
    "Parallel",
    "Remote",
    "RemoteError",
    "RequestTimeout",
    "ResultNotAvailable",
    "Retry",
    "SagaObserver",
    "SignatureError",
    "Signing",
    "Sleep",
    "Step",
    "StepContext",
    "StepEvent",
    "StepTimeout",
    "StoreError",
    "TransportClosed",
    "TransportError",
    "WaitForEvent",
    "WaitForSignal",
    "WaitTimeout",
    "WorkflowCancelled",
    "WorkflowEvent",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowStatus",
    "__version__",
]
