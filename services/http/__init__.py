"""The HTTP bridge: every agent over HTTP (routes mirror subjects), live views and a dashboard."""

from services.http.app import create_app
from services.http.config import BridgeConfig, config_from_settings

__all__ = ["BridgeConfig", "config_from_settings", "create_app"]
