"""Voice-OTP and IVR authentication in front of Twilio."""

from ivr.app import create_app

__all__ = ["create_app"]
