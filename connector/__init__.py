"""Secure data-space connector for cross-border medical imaging exchange.

The package is the hospital-side service: it must never let original PHI leave the hospital.
"""

__version__ = "0.1.0"
