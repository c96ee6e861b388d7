"""Messaging: send, publish (topics with wildcards), request and reply between principals."""

from habitus.messaging._messenger import Messenger, PolicyHook, PolicyRequest
from habitus.messaging._topics import matches

__all__ = ["Messenger", "PolicyHook", "PolicyRequest", "matches"]
