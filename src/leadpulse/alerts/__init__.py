"""`leadpulse alerts`: handoffs announced in Slack and on a signed webhook."""
