"""Outgoing webhooks: the job's own CallBack and the subscriptions, signed, retried, never lost."""
