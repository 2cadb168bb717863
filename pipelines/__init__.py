"""The generation engine and what it runs on.

- `engine`: runs requests (a control map, a generation, a composition), step by step;
- `request`: the typed request, checked once where it enters, and its PNG parameters;
- `loop/`: the denoising loop (ControlNet residuals, control modes, samplers, prompt embeddings);
- `speed/`: the opt-in ways to go faster (fast path, attention, precision, caching, LCM);
- `models/`: the model store (loading, caching, eviction, base switch).

Import `pipelines.engine.Engine` explicitly: it pulls in torch, while `pipelines.request`,
`pipelines.loop.control` and `pipelines.loop.schedulers` stay light for the UI.
"""
