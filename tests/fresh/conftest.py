"""Headless Chromium for these tests, as the dashboard's own browser tests get it."""

from tests.dashboard.test_browser import browser  # noqa: F401  (a fixture)
