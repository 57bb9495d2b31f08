"""Browser tests: headless Chromium, driven by Playwright, against the running platform."""
