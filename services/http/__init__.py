"""The HTTP bridge: every agent over HTTP (routes mirror subjects), live views and a dashboard.

Nothing is imported here: `mesh worker` reads this package's settings and config without loading
the application (a few hundred milliseconds of start-up).
"""
