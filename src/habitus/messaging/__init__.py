"""Messaging: send, publish (topics with wildcards), request and reply between principals."""

from habitus.messaging._messenger import Messenger
from habitus.messaging._topics import matches

__all__ = ["Messenger", "matches"]
