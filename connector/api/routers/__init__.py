"""One router per user group or concern."""
