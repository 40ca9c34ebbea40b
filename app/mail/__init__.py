"""Mail: the local SMTP sink that stands in for a real relay during development."""
