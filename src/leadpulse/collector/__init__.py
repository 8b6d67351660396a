"""`leadpulse collector`: the Segment Tracking API over HTTP, into the LeadPulse input topics."""
