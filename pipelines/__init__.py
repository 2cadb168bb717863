"""The generation engine. Import `pipelines.engine.Engine` explicitly: it pulls in torch, while
`pipelines.control`, `pipelines.request` and `pipelines.schedulers` stay light for the UI."""
