"""`make bench`: our webhooks and API under load, next to a bare Flask app with the same gunicorn
settings, so the numbers say what our own code costs rather than what the machine can do."""
