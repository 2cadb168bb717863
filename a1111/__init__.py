"""The AUTOMATIC1111 web UI's HTTP API (and its ControlNet extension's) on this app's engine: one
name table (`names`), payloads as the app's requests (`payload`), the routes (`routes`)."""
