"""LeadPulse: streaming, real-time B2B lead scoring."""

from __future__ import annotations

__version__ = "0.1.0"
