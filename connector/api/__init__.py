"""The REST API: an app factory, one router per user group, one error format."""
