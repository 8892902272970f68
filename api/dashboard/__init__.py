"""The provider's dashboard: server-rendered pages under ``/dashboard`` (Jinja2 + a little
vendored htmx, charts as inline SVG). Signed in with an admin key; see docs/dashboard.md."""
