"""The notifier: delivers the job events that webhooks asked for, signed and retried."""
