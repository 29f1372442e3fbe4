"""The web edge: one blueprint per kind of client (Twilio's webhooks, the API, public pages)."""
