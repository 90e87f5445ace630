"""The shared vocabulary of nokvpy: enums, tokens, descriptors, events and witnesses."""

from nokvpy.protocol.base import TAGS, wire_type  # noqa: F401 - re-exported
from nokvpy.protocol.enums import *  # noqa: F403
from nokvpy.protocol.records import *  # noqa: F403
