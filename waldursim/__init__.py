"""A Waldur stand-in: the offering-user REST API and event publishing through RabbitMQ.

See README.md beside this file. The public surface:
"""

from .broker import QUEUE_ARGUMENTS, BrokerAdmin, BrokerError
from .calls import Call, CallLog
from .eventlog import OLDER_WALDUR, USERNAME_UPDATED, EventLog, LoggedEvent
from .events import message_id, topic_for
from .faults import Faults
from .federation import ChangeDriver, FederationLink, FederationSpec, federation_scenario, write_usync_config
from .models import DISPLAY, SLURM, OfferingUserState
from .publisher import Publisher
from .site import Federation, Outgoing, Site, Subscription

__all__ = [
    "QUEUE_ARGUMENTS", "BrokerAdmin", "BrokerError", "Call", "CallLog", "message_id", "topic_for", "Faults",
    "DISPLAY", "SLURM", "OfferingUserState", "Publisher", "Federation", "Outgoing", "Site", "Subscription",
    "ChangeDriver", "FederationLink", "FederationSpec", "federation_scenario", "write_usync_config",
    "EventLog", "LoggedEvent", "OLDER_WALDUR", "USERNAME_UPDATED",
]
